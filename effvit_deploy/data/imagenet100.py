"""ImageNet-100 from an ImageNet-1k folder, by symlinks.

The class list is the 100-class subset of Contrastive Multiview Coding (Tian, Krishnan, Isola,
2019, arXiv:1906.05849), shipped verbatim as package data next to this module,
imagenet100_classes.txt (from github.com/HobbitLong/CMC, imagenet100.txt), so an installed
(non-editable) package finds it. Each class folder of the output links to the
ImageNet class folder, so the subset costs no disk space and re-running is harmless.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Union


from .decode import is_image_file
from .errors import DataError

SPLITS = ("train", "val")
DEFAULT_CLASS_FILE = Path(__file__).with_name("imagenet100_classes.txt")
WNID = re.compile(r"^n\d{8}$")


def read_class_list(path: Union[str, Path] = DEFAULT_CLASS_FILE) -> list[str]:
    """WordNet IDs, one per line, in file order; `#` comments and blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class list {path} not found: pass --classes FILE (one WordNet ID per line)")
    wnids = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    wnids = [w for w in wnids if w]
    bad = [w for w in wnids if not WNID.match(w)]
    if bad:
        raise DataError(f"{path}: not WordNet IDs (expected like n01440764): {bad[:10]}")
    dupes = sorted({w for w in wnids if wnids.count(w) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate classes {dupes}")
    if not wnids:
        raise DataError(f"{path} lists no classes")
    return wnids


def count_images(folder: Path) -> int:
    """Image files under `folder`, counted as torchvision's ImageFolder would load them."""
    return sum(
        1
        for _, _, files in os.walk(folder, followlinks=True)
        for f in files
        if is_image_file(f)
    )


def _check_source(imagenet: Path, wnids: list[str]) -> dict[str, dict[str, int]]:
    if not imagenet.is_dir():
        raise DataError(f"ImageNet folder {imagenet} does not exist: pass --imagenet DIR with DIR/train and DIR/val")
    counts: dict[str, dict[str, int]] = {}
    problems = []
    for split in SPLITS:
        split_dir = imagenet / split
        if not split_dir.is_dir():
            raise DataError(f"ImageNet folder {imagenet} has no {split}/ split (expected {split_dir}/<wnid>/*.JPEG)")
        if not any(p.is_dir() for p in split_dir.iterdir()) and any(split_dir.iterdir()):
            raise DataError(
                f"{split_dir} holds image files but no class folders: sort them into <wnid>/ folders "
                "first (for the official val set, e.g. with the valprep.sh script from "
                "github.com/soumith/imagenetloader.torch)"
            )
        counts[split] = {w: count_images(split_dir / w) if (split_dir / w).is_dir() else 0 for w in wnids}
        missing = [w for w, n in counts[split].items() if n == 0]
        if missing:
            problems.append(f"{split}/: {len(missing)} class(es) missing or without images: {' '.join(missing)}")
    if problems:
        raise DataError(f"ImageNet folder {imagenet} lacks classes of the list: " + "; ".join(problems))
    return counts


def _link(target: Path, link: Path) -> str:
    """Make `link` a symlink to `target`; returns 'created', 'kept' or 'replaced'."""
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return "kept"
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)
        return "replaced"
    if link.exists():
        raise DataError(f"{link} exists and is not a symlink: choose an empty --out directory or remove it")
    link.symlink_to(target, target_is_directory=True)
    return "created"


def build_imagenet100(
    imagenet: Union[str, Path],
    out: Union[str, Path],
    classes: Union[str, Path] = DEFAULT_CLASS_FILE,
) -> dict:
    """Link out/{train,val}/<wnid> -> imagenet/{train,val}/<wnid> for every listed class.

    Every class must have images in both splits (else DataError listing the missing ones, and
    nothing is written). Idempotent: existing correct links are kept, links to another place are
    replaced, and stale class links not in the list are removed so ImageFolder sees exactly the
    list. Returns {"classes": n, "splits": {split: {"images": n, "min_per_class": n,
    "max_per_class": n}}, "links": {"created": n, "kept": n, "replaced": n, "removed": n}}.
    """
    imagenet, out = Path(imagenet).resolve(), Path(out)
    wnids = read_class_list(classes)
    counts = _check_source(imagenet, wnids)
    links = {"created": 0, "kept": 0, "replaced": 0, "removed": 0}
    wanted = set(wnids)
    for split in SPLITS:
        split_out = out / split
        split_out.mkdir(parents=True, exist_ok=True)
        for entry in split_out.iterdir():
            if entry.name not in wanted:
                if not entry.is_symlink():
                    raise DataError(f"{entry} is not a class of the list and not a link made by this tool: remove it")
                entry.unlink()
                links["removed"] += 1
        for w in wnids:
            links[_link(imagenet / split / w, split_out / w)] += 1
    splits = {
        split: {
            "images": sum(counts[split].values()),
            "min_per_class": min(counts[split].values()),
            "max_per_class": max(counts[split].values()),
        }
        for split in SPLITS
    }
    return {"classes": len(wnids), "splits": splits, "links": links}
