"""The validation subset: which images "the first N validation images" means, everywhere.

Export (accuracy of each artifact), bench (accuracy per backend), the demo (accuracy of the
served backend) and the approximation-error table all score a limited number of validation
images; they all take them from `validation_subset`, so the same limit scores the same files and
their top-1 figures are comparable. The images are evenly spaced over the split (index
i * len // limit), so a small limit still covers every class of a class-sorted folder.
"""
from __future__ import annotations

from typing import Any, Optional

from torch.utils.data import Dataset, Subset


def subset_indices(total: int, limit: Optional[int]) -> list[int]:
    """`limit` evenly spaced indices of `total` items, starting at 0 (all of them when limit is
    None, 0 or >= total)."""
    if not limit or limit >= total:
        return list(range(total))
    return [i * total // limit for i in range(limit)]


def validation_subset(card: Any, limit: Optional[int], img_size: Optional[int] = None,
                      crop_pct: Optional[float] = None, split: str = "val") -> Subset:
    """The run's validation split (card's data set and preprocessing, optionally at another size
    or crop) restricted to `subset_indices(len, limit)`. `split="train"`: the same rule over the
    training images with the eval transform (int8 calibration)."""
    from .datasets import build_eval_dataset

    dataset, _ = build_eval_dataset(
        card.data, img_size or card.img_size, card.mean, card.std, card.interpolation,
        card.crop_pct if crop_pct is None else crop_pct, split=split,
    )
    return Subset(dataset, subset_indices(len(dataset), limit))


def subset_files(subset: Subset) -> list[str]:
    """What a subset scores: file paths for a folder data set, else "split[index]" names."""
    dataset: Dataset = subset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        return [str(samples[i][0]) for i in subset.indices]
    split = getattr(dataset, "split", type(dataset).__name__)
    return [f"{split}[{i}]" for i in subset.indices]
