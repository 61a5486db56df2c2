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
from torchvision.datasets.folder import IMG_EXTENSIONS

from .decode import load_rgb
from .errors import BadImageError, DataError

ON_BAD_IMAGE = ("skip", "error")
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

    def __init__(self, root: Union[str, Path], transform: Optional[Callable] = None, on_bad_image: str = "skip"):
        check_on_bad_image(on_bad_image)
        super().__init__(str(root), transform=transform, allow_empty=True)
        self.on_bad_image = on_bad_image

    def find_classes(self, directory: Union[str, Path]) -> tuple[list[str], dict[str, int]]:
        """Class folders, sorted, leaving out hidden ones (`.ipynb_checkpoints`, `.Trash-1000`),
        which torchvision would otherwise turn into classes."""
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        return classes, {name: i for i, name in enumerate(classes)}

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


def open_split(root: Union[str, Path], split: str, transform: Optional[Callable], on_bad_image: str) -> CheckedImageFolder:
    """One split of an ImageFolder data set, with a clear error when it is missing or empty."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist: the data root must be a directory with train/ and "
            "val/ class folders (build ImageNet-100 with `effvit-data imagenet100`, or write the "
            "digits as one with `effvit-data digits --out DIR`)"
        )
    split_dir = root / split
    if not split_dir.is_dir():
        raise DataError(f"data folder {root} has no {split}/ split: expected {split_dir}/<class>/<image files>")
    ds = CheckedImageFolder(split_dir, transform=transform, on_bad_image=on_bad_image)
    if not ds.samples:
        raise DataError(
            f"split {split_dir} is empty: no image files ({', '.join(IMG_EXTENSIONS)}) in class folders "
            f"under it ({len(ds.classes)} class folder(s) found)"
        )
    return ds



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
