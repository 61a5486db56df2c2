"""Image preprocessing: timm's `create_transform`, configured from a run's ModelCard.

Training augmentation (RandAugment, random erasing, random-resized-crop scale, flips) is timm's
(Wightman, pytorch-image-models, `timm/data/transforms_factory.py`); this module only maps our
recipe keys onto it, so a recipe reads like timm's own `train.py` arguments.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import torch
from PIL import Image
from timm.data import create_transform

from .errors import DataError

if TYPE_CHECKING:
    from ..runs import ModelCard

# Augmentation keys passed straight to timm.data.create_transform (its argument names).
TRANSFORM_AUG_KEYS = frozenset({
    "scale", "ratio", "hflip", "vflip", "color_jitter", "color_jitter_prob", "grayscale_prob",
    "gaussian_blur_prob", "auto_augment", "re_prob", "re_mode", "re_count", "train_crop_mode",
})
# Batch-level augmentation (timm.data.Mixup) lives in the training loop, not in the per-image
# transform; these keys may share the recipe's `aug` block and are left for the trainer.
BATCH_AUG_KEYS = frozenset({
    "mixup", "cutmix", "mixup_alpha", "cutmix_alpha", "cutmix_minmax", "mixup_prob",
    "mixup_switch_prob", "mixup_mode", "label_smoothing",
})


def build_transform(
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    *,
    train: bool,
    aug: Optional[dict[str, Any]] = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised CHW float tensor of size `img_size`.

    Eval (and training with `aug=None`, i.e. no augmentation): resize the short side to
    `img_size / crop_pct`, centre-crop `img_size`, normalise. Training with an `aug` dict: timm's
    training transform (random-resized crop, flip, colour jitter by default) with the dict's keys
    overriding timm's defaults, e.g. `{"auto_augment": "rand-m9-mstd0.5-inc1", "re_prob": 0.25}`;
    `{}` gives timm's defaults. Mixup/cutmix keys are ignored here (they act on batches).
    """
    if not train or aug is None:
        return create_transform(
            img_size, is_training=False, interpolation=interpolation, mean=tuple(mean),
            std=tuple(std), crop_pct=crop_pct,
        )
    unknown = sorted(set(aug) - TRANSFORM_AUG_KEYS - BATCH_AUG_KEYS)
    if unknown:
        raise DataError(
            f"unknown augmentation key(s) {unknown}; known: {sorted(TRANSFORM_AUG_KEYS | BATCH_AUG_KEYS)}"
        )
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in aug.items() if k in TRANSFORM_AUG_KEYS}
    return create_transform(
        img_size, is_training=True, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
        **kwargs,
    )


def eval_transform(card: "ModelCard") -> Callable[[Image.Image], torch.Tensor]:
    """The exact eval preprocessing of a trained run, for single images (demo, export checks)."""
    return build_transform(
        card.img_size, card.mean, card.std, card.interpolation, card.crop_pct, train=False
    )
