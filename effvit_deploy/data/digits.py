"""The bundled digits: scikit-learn's 1797 real 8x8 handwritten digits (UCI optdigits test set,
Alpaydin & Kaynak 1998), shipped inside scikit-learn, so every stage runs offline.

Images are upscaled (bicubic) to the model resolution and made RGB; the train/val split is a
fixed, stratified 80/20 split drawn with NumPy's legacy `RandomState`, whose stream NumPy keeps
stable across versions, so it is identical on every machine.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .errors import DataError

VAL_FRACTION = 0.2
CLASS_NAMES = [str(i) for i in range(10)]


@lru_cache(maxsize=1)
def load_digits_uint8() -> tuple[np.ndarray, np.ndarray]:
    """(images [1797, 8, 8] uint8 with ink bright, labels [1797] int64)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, val indices), sorted: a stratified 80/20 split, fixed by `seed`."""
    _, labels = load_digits_uint8()
    rng = np.random.RandomState(seed)
    train, val = [], []
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(VAL_FRACTION * len(idx)))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


class DigitsDataset(Dataset):
    """One split of the digits as (image, label); the image is a PIL RGB image of `size` pixels
    when `transform` is None, else whatever the transform returns."""

    def __init__(self, split: str, size: int, transform: Optional[Callable] = None, seed: int = 0):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        images, labels = load_digits_uint8()
        index = digits_split(seed)[0 if split == "train" else 1]
        self.index = index
        self.images, self.labels = images[index], labels[index]
        self.size, self.transform = size, transform
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        gray = Image.fromarray(self.images[i], mode="L")
        return gray.resize((self.size, self.size), Image.Resampling.BICUBIC).convert("RGB")

    def __getitem__(self, i: int) -> tuple[Union[torch.Tensor, Image.Image], int]:
        img = self.image(i)
        return (self.transform(img) if self.transform else img), int(self.labels[i])


def write_digits_folder(out: Union[str, Path], img_size: int = 64, seed: int = 0) -> dict[str, int]:
    """Write the digits as an ImageFolder of PNGs (out/{train,val}/<digit>/NNNN.png, NNNN the
    index in scikit-learn's array); returns the image count per split (see `write_folder`)."""
    splits = {split: DigitsDataset(split, img_size, seed=seed) for split in ("train", "val")}
    return write_folder(out, splits, lambda ds, i: f"{int(ds.index[i]):04d}.png")


def write_folder(out: Union[str, Path], splits: dict[str, Dataset],
                 file_name: Callable[[Dataset, int], str] = lambda ds, i: f"{i:05d}.png") -> dict[str, int]:
    """Write generated splits (datasets with `image(i)`, `labels` and `classes`) as an ImageFolder
    of PNGs, out/<split>/<class>/<file_name>; returns the image count per split.

    The folder is staged next to `out` and renamed into place, so it appears complete or not at
    all. An existing `out` is replaced only when it holds nothing but train/ and val/ (a previous
    generated folder); anything else is an error rather than deleted.
    """
    out = Path(out)
    if out.exists() and not (out.is_dir() and set(os.listdir(out)) <= {"train", "val"}):
        raise DataError(f"{out} exists and is not a generated (digits) folder (only train/ and val/): choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        counts = {}
        for split, ds in splits.items():
            for name in ds.classes:
                (stage / split / name).mkdir(parents=True)
            labels = ds.labels
            for i in range(len(ds)):
                ds.image(i).save(stage / split / ds.classes[int(labels[i])] / file_name(ds, i))
            counts[split] = len(ds)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            os.replace(out, old)
            os.replace(stage, out)
            shutil.rmtree(old)
        else:
            os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return counts
