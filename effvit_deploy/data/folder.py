"""ImageFolder data sets (`root/train/<class>/*`, `root/val/<class>/*`), e.g. ImageNet-100.

Checked before any training starts: the folder and both splits exist, neither split is empty,
and both splits hold the same classes. A file that cannot be decoded never crashes an epoch
hours in: with `on_bad_image="skip"` its item is None (a warning names the file) and
`collate_skip_bad` drops and counts it; with "error" it raises BadImageError naming the file.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder

from .decode import accepted_formats, is_image_file, load_rgb
from .errors import BadImageError, DataError

ON_BAD_IMAGE = ("skip", "error")
# What a class folder with no readable image does: refuse the data set naming it, or leave the
# class out (of both splits, with a message; recorded in the run's model.json).
ON_EMPTY_CLASS = ("error", "drop")
# What PIL raises for unreadable, truncated or hostile files.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


class BadImageWarning(UserWarning):
    """An undecodable image was skipped."""


def check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise DataError(f"on_bad_image must be one of {list(ON_BAD_IMAGE)}, got {on_bad_image!r}")


class CheckedImageFolder(ImageFolder):
    """torchvision's ImageFolder whose items are None (skip) or raise BadImageError (error) for
    files that cannot be decoded, instead of an arbitrary PIL exception. Images are decoded by
    `decode.load_rgb`, the same function the demo uses (EXIF orientation, 16-bit, transparency)."""

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None, on_bad_image: str = "skip",
                 exclude: Sequence[str] = ()):
        check_on_bad_image(on_bad_image)
        self.exclude = frozenset(exclude)
        super().__init__(str(root), transform=transform, allow_empty=True, is_valid_file=is_image_file)
        self.on_bad_image = on_bad_image

    def find_classes(self, directory: Union[str, Path]) -> tuple[list[str], dict[str, int]]:
        """Class folders, sorted, leaving out hidden ones (`.ipynb_checkpoints`, `.Trash-1000`),
        which torchvision would otherwise turn into classes, and the `exclude`d ones."""
        classes = sorted(e.name for e in os.scandir(directory)
                         if e.is_dir() and not e.name.startswith(".") and e.name not in self.exclude)
        return classes, {name: i for i, name in enumerate(classes)}

    def unreadable_classes(self) -> list[str]:
        """Classes with no image that decodes: no image file at all, or only unreadable ones.
        Each class's files are tried in order until one decodes (one decode per healthy class)."""
        files: dict[int, list[str]] = {}
        for path, target in self.samples:
            files.setdefault(target, []).append(path)
        bad = []
        for name, index in self.class_to_idx.items():
            for path in files.get(index, []):
                try:
                    load_rgb(path)
                    break
                except DECODE_ERRORS:
                    continue
            else:
                bad.append(name)
        return bad

    def images_per_class(self) -> dict[str, int]:
        counts = Counter(target for _, target in self.samples)
        return {name: counts.get(i, 0) for name, i in self.class_to_idx.items()}

    def __getitem__(self, index: int) -> Optional[tuple[Any, int]]:
        path, target = self.samples[index]
        try:
            img = load_rgb(path)
        except DECODE_ERRORS as exc:
            if self.on_bad_image == "error":
                raise BadImageError.for_file(path, f"{type(exc).__name__}: {exc}") from exc
            warnings.warn(f"skipping unreadable image {path}: {exc}", BadImageWarning, stacklevel=2)
            return None
        return (self.transform(img) if self.transform else img), target


def open_split(root: Union[str, Path], split: str, transform: Optional[Callable], on_bad_image: str,
               exclude: Sequence[str] = ()) -> CheckedImageFolder:
    """One split of an ImageFolder data set (without the `exclude`d classes), with a clear error
    when it is missing or empty."""
    root = Path(root)
    if root.is_file():
        raise DataError(f"data folder {root} is a file, expected a folder with train/ and val/ class folders")
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: the data root must be a directory with train/ and "
            "val/ class folders (build ImageNet-100 with `effvit-data imagenet100`, or write the "
            "digits as one with `effvit-data digits --out DIR`)"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"data folder {root} has no {split}/ split: expected {split_dir}/<class>/<image files>")
    ds = CheckedImageFolder(split_dir, transform=transform, on_bad_image=on_bad_image, exclude=exclude)
    if not ds.samples:
        raise DataError(
            f"split {split_dir} is empty: no image files ({accepted_formats()}) in class folders "
            f"under it ({len(ds.classes)} class folder(s) found)"
        )
    return ds


def unusable_classes(splits: dict[str, CheckedImageFolder]) -> dict[str, list[str]]:
    """{class: [splits where it has no readable image]} over the given splits."""
    found: dict[str, list[str]] = {}
    for split, ds in splits.items():
        for name in ds.unreadable_classes():
            found.setdefault(name, []).append(split)
    return found


def describe_unusable(root: Union[str, Path], found: dict[str, list[str]]) -> str:
    names = [f"{name} ({'/'.join(splits)})" for name, splits in sorted(found.items())]
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    return f"{len(found)} class folder(s) of {root} hold no readable image: {shown}"


def check_same_classes(train: CheckedImageFolder, val: CheckedImageFolder) -> None:
    """Both splits must hold images of exactly the same classes (an empty class folder counts
    as absent), or labels would silently disagree between training and evaluation."""
    have = {
        split: {c for c, n in ds.images_per_class().items() if n > 0}
        for split, ds in (("train", train), ("val", val))
    }
    only_train, only_val = sorted(have["train"] - have["val"]), sorted(have["val"] - have["train"])
    if only_train or only_val:
        parts = []
        if only_train:
            parts.append(f"in train/ but not val/: {only_train}")
        if only_val:
            parts.append(f"in val/ but not train/: {only_val}")
        raise DataError(
            f"the splits of {Path(train.root).parent} hold different classes ({'; '.join(parts)}); "
            "give every class images in both splits or remove it from both"
        )


def describe_folder(root: Union[str, Path]) -> dict[str, dict[str, int]]:
    """{split: {"classes": n, "images": n}} of an ImageFolder data set, after the same checks
    `build_datasets` makes (both splits present and non-empty, same classes)."""
    splits = {split: open_split(root, split, None, "skip") for split in ("train", "val")}
    check_same_classes(splits["train"], splits["val"])
    found = unusable_classes(splits)
    if found:
        raise DataError(f"{describe_unusable(root, found)}; add images or remove those folders (training refuses "
                        "them unless data.on_empty_class=drop)")
    return {split: {"classes": len(ds.classes), "images": len(ds)} for split, ds in splits.items()}


def collate_skip_bad(batch: Sequence[Optional[tuple[torch.Tensor, int]]]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """DataLoader collate_fn: drop None items (skipped bad images) and count them.

    Returns (images [B, C, H, W], labels [B], n_skipped). When every item of a batch was bad,
    images and labels are empty (size 0): the training loop skips such a batch. A plain
    module-level function, so it pickles into DataLoader worker processes.
    """
    good = [item for item in batch if item is not None]
    n_skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), n_skipped
    images, labels = default_collate(good)
    return images, labels, n_skipped
