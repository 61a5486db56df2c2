"""Synthetic class-conditional images at any resolution, for throughput and scaling runs.

Each class has its own grating orientation, spatial frequency and colour; every image adds a
random phase, contrast, orientation jitter, a distracting grating of random orientation and
pixel noise, so the classes are learnable but not separable by the mean colour alone. Images are
generated on the fly, deterministic per (seed, split, index), and resolution-independent (the
pattern is defined on [0, 1)^2), so the same data set serves 64 px and 1024 px runs.
"""
from __future__ import annotations

import colorsys
import math
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

SPLIT_IDS = {"train": 0, "val": 1}


class SyntheticDataset(Dataset):
    """`length` generated images of `img_size` pixels in `num_classes` classes (label = index
    modulo num_classes, so classes are balanced); PIL RGB images when `transform` is None."""

    def __init__(
        self,
        split: str,
        length: int,
        num_classes: int,
        img_size: int,
        seed: int = 0,
        transform: Optional[Callable] = None,
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.split, self.length, self.num_classes = split, length, num_classes
        self.img_size, self.seed, self.transform = img_size, seed, transform
        self.classes = [f"class_{c:0{len(str(num_classes - 1))}d}" for c in range(num_classes)]

    def __len__(self) -> int:
        return self.length

    def label(self, i: int) -> int:
        return i % self.num_classes

    def image(self, i: int) -> Image.Image:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} images")
        c, k = self.label(i), self.num_classes
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], i])
        coords = np.arange(self.img_size, dtype=np.float32) / self.img_size

        theta = math.pi * c / k + rng.normal(0.0, math.pi / (6 * k))
        freq = 3.0 + 2.0 * (c % 4) + rng.normal(0.0, 0.3)
        signal = _grating(coords, freq, theta, rng.uniform(0, 2 * math.pi))
        distractor = _grating(coords, rng.uniform(2, 9), rng.uniform(0, math.pi), 0.0)

        colour = np.array(colorsys.hsv_to_rgb((c / k + rng.normal(0.0, 0.05)) % 1.0, 0.8, 1.0), np.float32)
        contrast = rng.uniform(0.3, 1.0)
        base = rng.uniform(0.3, 0.7, size=3).astype(np.float32)
        img = (
            base
            + 0.3 * contrast * signal[..., None] * colour
            + 0.2 * distractor[..., None] * rng.uniform(0, 1, size=3).astype(np.float32)
            + 0.2 * rng.standard_normal((self.img_size, self.img_size, 3), dtype=np.float32)
        )
        return Image.fromarray(np.clip(img * 255.0, 0, 255).astype(np.uint8), mode="RGB")

    def __getitem__(self, i: int) -> tuple[Union[torch.Tensor, Image.Image], int]:
        img = self.image(i)
        return (self.transform(img) if self.transform else img), self.label(i)


def _grating(coords: np.ndarray, freq: float, theta: float, phase: float) -> np.ndarray:
    """sin(2 pi freq (x cos theta + y sin theta) + phase) on the grid coords x coords (rows = y),
    as a sum of two outer products (angle addition), so it costs O(n) sines at any resolution."""
    ax = (2 * math.pi * freq * math.cos(theta)) * coords
    ay = (2 * math.pi * freq * math.sin(theta)) * coords + phase
    return np.outer(np.cos(ay), np.sin(ax)) + np.outer(np.sin(ay), np.cos(ax))
