"""Find image files that cannot be decoded (`effvit-data check DIR`), before training meets them,
and list those whose pixels the shared decoder (`decode.decode_rgb`) changes beyond a plain RGB
conversion (EXIF rotation, 16-bit rescaling, transparency), so nothing is converted silently."""
from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Optional, Union

from tqdm import tqdm

from .decode import decode_rgb, is_image_file
from .folder import DECODE_ERRORS


@dataclass
class CheckReport:
    """What `find_bad_images` saw: images checked, the bad ones with PIL's reason, the ones the
    decoder converts (with what it does to them), and the files ignored: not in an accepted
    image format (`decode.IMAGE_EXTENSIONS`), so training never loads them."""

    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    converted: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    @property
    def other_files(self) -> int:
        return len(self.ignored)


def inspect_image(path: str) -> tuple[Optional[str], str]:
    """(None, what decoding changes or "") when the file decodes, else (the reason, "")."""
    try:
        _, notes = decode_rgb(path)
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}", ""
    return None, "; ".join(notes)


def find_bad_images(root: Union[str, Path], workers: int = 0, progress: bool = False) -> CheckReport:
    """Decode every image file under `root` (following symlinks, as ImageFolder does) with PIL
    (open + load, truncated files fail); `workers` > 1 decodes in that many processes;
    `progress` shows a tqdm bar (on stderr)."""
    root = Path(root)
    if root.is_file():
        raise NotADirectoryError(f"{root} is a file, expected a folder of images")
    if not root.is_dir():
        raise FileNotFoundError(f"{root} does not exist")
    report = CheckReport()
    paths = []
    for dirpath, _, files in os.walk(root, followlinks=True):
        for f in sorted(files):
            if is_image_file(f):
                paths.append(os.path.join(dirpath, f))
            else:
                report.ignored.append(os.path.join(dirpath, f))
    paths.sort()
    report.ignored.sort()
    with Pool(workers) if workers > 1 else nullcontext() as pool:
        results = pool.imap(inspect_image, paths, chunksize=64) if pool else map(inspect_image, paths)
        for path, (reason, change) in tqdm(zip(paths, results), total=len(paths), unit="img", disable=not progress):
            report.checked += 1
            if reason is not None:
                report.bad.append((path, reason))
            elif change:
                report.converted.append((path, change))
    return report
