"""Shared fixtures: tiny models and complete run directories made in seconds, no training."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from effvit_deploy import ATTENTIONS, build_model
from effvit_deploy.runs import ModelCard, write_run

torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY_MODEL = "vit_tiny_patch16_224"
TINY_IMG = 64  # a 4x4 patch grid: each mechanism's `tiny_settings` fit it


def tiny_model(attention: str, num_classes: int = 10, depth: int = 2, img_size: int = TINY_IMG, **kwargs):
    """A 2-block ViT-Tiny-width model at 64 px with its mechanism's `tiny_settings` (class fact),
    overridden by `kwargs`."""
    torch.manual_seed(0)
    return build_model(
        TINY_MODEL, attention=attention, num_classes=num_classes, depth=depth, img_size=img_size,
        **{**ATTENTIONS[attention].tiny_settings, **kwargs},
    )


def make_tiny_run(run_dir: Path, attention: str, num_classes: int = 10, top1: float = 0.5) -> Path:
    """A complete run directory (card, weights, summary) for an untrained tiny model."""
    model = tiny_model(attention, num_classes=num_classes)
    card = ModelCard.for_model(
        model,
        img_size=TINY_IMG,
        class_names=[str(i) for i in range(num_classes)],
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        data={"name": "digits", "root": None, "img_size": TINY_IMG},
    )
    summary = {"top1": top1, "top5": 1.0, "attention": attention, "model": TINY_MODEL}
    return write_run(run_dir, model, card, summary)


def make_large_activation_run(run_dir: Path, attention: str, scale: float = 8.0) -> Path:
    """`make_tiny_run` with every block's q and k rows (weights and biases) scaled by `scale`:
    the large-norm, peaked attention trained models reach, for fp16 and parity checks."""
    from effvit_deploy.runs import load_run, save_weights

    run = make_tiny_run(run_dir, attention)
    model, _ = load_run(run)
    with torch.no_grad():
        for block in model.blocks:
            dim = block.attn.qkv.in_features
            block.attn.qkv.weight[: 2 * dim] *= scale
            block.attn.qkv.bias[: 2 * dim] *= scale
    save_weights(model, run / "checkpoints" / "best.safetensors")
    return run


@pytest.fixture(params=sorted(ATTENTIONS))
def attention(request) -> str:
    return request.param


@pytest.fixture
def tiny_run(tmp_path, attention) -> Path:
    return make_tiny_run(tmp_path / f"tiny-{attention}", attention)
