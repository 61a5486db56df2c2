"""Top-1 accuracy a reader can trust: one measurement rule, its image count, a 95% interval and a
paired test against a control.

Everything in the project that prints an accuracy (the study, the benchmark report's cells, the
export log, the demo) measures it on `validation_batches` (`data.subset.validation_subset`: the
same evenly spaced validation images for the same limit) with one scoring rule
(`top1_of_logits`; `top1_of` runs a predict function over the batches) and prints it with
`Top1.text`, which always carries the image count. Statistics:

- Wilson score interval (Wilson 1927; Brown, Cai & DasGupta 2001, "Interval Estimation for a
  Binomial Proportion"): a 95% interval that stays inside [0, 1] and keeps its coverage near 0
  and 1, unlike the normal approximation.
- McNemar's exact test (McNemar 1947; the binomial form recommended by Dietterich 1998 for
  comparing two classifiers on one test set): of the images on which two models disagree in
  correctness, b are right only for A and c only for B; under "equally accurate" b ~ Bin(b + c,
  1/2). Two-sided p-value from scipy.stats.binomtest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

MIN_IMAGES = 500  # a report cell or recommendation resting on fewer images says so and is not recommended
Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(correct: int, images: int, z: float = Z95) -> tuple[float, float]:
    """95% (by default) Wilson score interval of a proportion correct/images. Raises ValueError
    when images < 1 or correct is outside [0, images]."""
    if images < 1 or not 0 <= correct <= images:
        raise ValueError(f"need 0 <= correct <= images and images >= 1, got {correct}/{images}")
    p, z2 = correct / images, z * z
    centre = (p + z2 / (2 * images)) / (1 + z2 / images)
    half = z * math.sqrt(p * (1 - p) / images + z2 / (4 * images * images)) / (1 + z2 / images)
    return (0.0 if correct == 0 else max(0.0, centre - half)), (1.0 if correct == images else min(1.0, centre + half))


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test of two models scored on the same images (per-image correctness, in
    the same order). Returns {"a_only": b, "b_only": c, "p_value", "images"}; p = 1 when they
    never disagree. Raises ValueError when the sequences differ in length."""
    from scipy.stats import binomtest

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired test needs the same images: {a.size} vs {b.size} predictions")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": float(p), "images": int(a.size)}


@dataclass
class Top1:
    """Top-1 of one model on `images` validation images; `correct` is per-image (subset order)."""

    correct: list[bool] = field(repr=False)
    top5: Optional[float] = None

    @property
    def images(self) -> int:
        return len(self.correct)

    @property
    def top1(self) -> float:
        return sum(self.correct) / self.images

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(sum(self.correct), self.images)

    @property
    def text(self) -> str:
        return top1_text(self.top1, self.images, self.interval)

    def as_dict(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"top1": self.top1, "top5": self.top5, "images": self.images, "ci95": [lo, hi]}


def top1_text(top1: float, images: int, interval: Optional[Sequence[float]] = None) -> str:
    """"0.912 [0.893, 0.928] on 1,000 images": an accuracy always with its count (and interval)."""
    if interval is None:
        interval = wilson_interval(round(top1 * images), images)
    tail = "" if images >= MIN_IMAGES else f", under {MIN_IMAGES}: not for decisions"
    return f"{top1:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] on {images:,} images{tail}"


class NonFiniteLogits(ValueError):
    """A model or artifact returned NaN or infinite logits: its accuracy is not a number to report."""


def top1_of_logits(logits: Any, labels: Any) -> Top1:
    """The scoring rule every top-1 goes through: logits (B, classes), tensor or array, against
    labels (B,) integer class indices; top-5 counts a label among the 5 largest logits (all
    when fewer classes). Ties go to the lowest class index.

    Raises:
        NonFiniteLogits: the logits hold NaN or inf (never scored as a guess).
        ValueError: there is no image to score.
    """
    if len(labels) == 0:
        raise ValueError("no image to score: the logits are empty")
    correct, top5 = _hits(logits, labels)
    return Top1(correct, top5=top5 / len(correct))


def _hits(logits: Any, labels: Any) -> tuple[list[bool], int]:
    """(per-image top-1 correctness, top-5 hit count) of one batch; raises NonFiniteLogits."""
    import torch

    logits = (logits if torch.is_tensor(logits) else torch.as_tensor(np.asarray(logits))).float()
    labels = labels if torch.is_tensor(labels) else torch.as_tensor(np.asarray(labels))
    if not torch.isfinite(logits).all():
        raise NonFiniteLogits("the logits hold NaN or inf on validation images")
    k = min(5, logits.shape[1])
    return (logits.argmax(1) == labels).tolist(), int((logits.topk(k, 1).indices == labels[:, None]).any(1).sum())


def validation_batches(card: Any, limit: Optional[int], resolution: Optional[int] = None,
                       batch_size: int = 32) -> Iterator[tuple[Any, Any]]:
    """(images float32 (B, 3, H, W), labels (B,)) torch batches of the run's validation subset of
    `limit` images (`data.subset.validation_subset`; all when None), in subset order, at
    `resolution` px (default: the training one). Unreadable images are skipped, and a batch
    left with none is not yielded."""
    import torch

    from .data import collate_skip_bad
    from .data.subset import validation_subset

    loader = torch.utils.data.DataLoader(validation_subset(card, limit, img_size=resolution), batch_size=batch_size,
                                         shuffle=False, num_workers=0, collate_fn=collate_skip_bad)
    for images, labels, _skipped in loader:
        if len(labels):
            yield images, labels


def top1_of(predict: Callable[[Any], Any], card: Any, limit: Optional[int], resolution: Optional[int] = None,
            batch_size: int = 32) -> Top1:
    """Score `predict` (a float32 image batch (B, 3, H, W), torch tensor -> logits (B, classes),
    tensor or array) on `validation_batches(card, limit, resolution, batch_size)` with
    `top1_of_logits`'s rule. Unreadable images are skipped (not counted).

    Raises:
        NonFiniteLogits: a batch's logits hold NaN or inf (never scored as a guess).
        ValueError: nothing could be scored.
    """
    import torch

    correct: list[bool] = []
    top5 = 0
    with torch.inference_mode():
        for images, labels in validation_batches(card, limit, resolution, batch_size):
            hits, hits5 = _hits(predict(images), labels)
            correct += hits
            top5 += hits5
    if not correct:
        raise ValueError(f"no validation image of {card.data} could be scored")
    return Top1(correct, top5=top5 / len(correct))
