"""Cluttered digits: find one small handwritten digit in a large image full of digit fragments.

The "cluttered MNIST" construction of Jaderberg et al. 2015 (Spatial Transformer Networks,
arXiv:1506.02025, section 4.1) made from scikit-learn's bundled digits, so it runs offline: each
image is a canvas with one whole digit (the label) at a random position and scale, over
fragments cropped from other digits. The object covers a few percent of the image, so at 128 px
and up a ViT must attend across hundreds to thousands of patch tokens to find it, the regime
where efficient attention mechanisms differ.

Properties the tests check:
- deterministic: image i of a split depends only on (seed, split, i), drawn with NumPy's legacy
  `RandomState`, whose stream NumPy keeps stable across versions;
- resolution-independent: the layout is drawn in canvas coordinates [0, 1)^2 and only rendered
  at `img_size`, so the same image i at 64 px and at 512 px shows the same scene;
- leak-free: train and val images are built only from the train and val source digits of the
  digits split (`digits_split`), so one handwritten sample never appears in both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .digits import CLASS_NAMES, digits_split, load_digits_uint8

SPLIT_IDS = {"train": 0, "val": 1}
DIGIT_SCALE = (0.28, 0.38)  # side of the labelled digit, as a fraction of the canvas side
FRAGMENTS = (3, 6)  # clutter pieces per image (inclusive range)
FRAGMENT_PIXELS = 4  # a fragment is a 4x4 crop of an 8x8 source digit


@dataclass(frozen=True)
class Piece:
    """One source-digit crop placed on the canvas: rows/cols of the 8x8 source, box in [0, 1)."""

    source: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    x: float
    y: float
    size: float  # canvas fraction per source pixel


class ClutteredDigits(Dataset):
    """`length` cluttered images of one split, labelled with the whole digit's class.

    Image i places source digit `pool[i % len(pool)]` (the split's digits in a fixed shuffled
    order, so the classes stay balanced and every source digit is used before any repeats);
    PIL RGB images of `img_size` pixels when `transform` is None.
    """

    def __init__(
        self,
        split: str,
        length: int,
        img_size: int,
        seed: int = 0,
        transform: Optional[Callable] = None,
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self.images, self.all_labels = load_digits_uint8()
        pool = digits_split(seed)[SPLIT_IDS[split]]
        self.pool = np.random.RandomState(seed).permutation(pool)
        self.split, self.length, self.img_size = split, length, img_size
        self.seed, self.transform = seed, transform
        self.classes = list(CLASS_NAMES)

    def __len__(self) -> int:
        return self.length

    def label(self, i: int) -> int:
        return int(self.all_labels[self.pool[i % len(self.pool)]])

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(self.length)], dtype=np.int64)

    def layout(self, i: int) -> list[Piece]:
        """The scene of image i in canvas coordinates: fragments first, the labelled digit last."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for {self.length} images")
        rng = np.random.RandomState([self.seed, SPLIT_IDS[self.split], i])
        side = rng.uniform(*DIGIT_SCALE)
        pixel = side / 8
        pieces = []
        for _ in range(rng.randint(FRAGMENTS[0], FRAGMENTS[1] + 1)):
            other = int(self.pool[rng.randint(len(self.pool))])
            r, c = rng.randint(0, 8 - FRAGMENT_PIXELS + 1, size=2)
            frag = FRAGMENT_PIXELS * pixel
            x, y = rng.uniform(0, 1 - frag, size=2)
            pieces.append(Piece(other, (int(r), int(r) + FRAGMENT_PIXELS), (int(c), int(c) + FRAGMENT_PIXELS),
                                float(x), float(y), pixel))
        x, y = rng.uniform(0, 1 - side, size=2)
        pieces.append(Piece(int(self.pool[i % len(self.pool)]), (0, 8), (0, 8), float(x), float(y), pixel))
        return pieces

    def sources(self, i: int) -> set[int]:
        """Indices (in scikit-learn's array) of every handwritten digit image i is made of."""
        return {p.source for p in self.layout(i)}

    def image(self, i: int) -> Image.Image:
        size = self.img_size
        canvas = np.zeros((size, size), dtype=np.uint8)
        for p in self.layout(i):
            crop = self.images[p.source][p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
            x0, y0 = round(p.x * size), round(p.y * size)
            x1 = min(size, max(x0 + 1, round((p.x + crop.shape[1] * p.size) * size)))
            y1 = min(size, max(y0 + 1, round((p.y + crop.shape[0] * p.size) * size)))
            tile = np.asarray(Image.fromarray(crop, mode="L").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
            np.maximum(canvas[y0:y1, x0:x1], tile, out=canvas[y0:y1, x0:x1])
        return Image.fromarray(canvas, mode="L").convert("RGB")

    def __getitem__(self, i: int) -> tuple[Union[torch.Tensor, Image.Image], int]:
        img = self.image(i)
        return (self.transform(img) if self.transform else img), self.label(i)
