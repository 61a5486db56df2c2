"""`--layer-only`: one attention layer alone, as a Runner, for the token-scaling study.

The layer is the mechanism module `build_model` puts in every block (ViT-S/16 dims by
default: dim 384, 6 heads, qkv bias), fed [batch, 1 + H*W, dim] tokens for an H x W patch grid
(one class token, as in the model). Only the PyTorch backends run it: the layer reads its grid
from a Python attribute, so there is no single dynamic-shape ONNX graph of it to serve.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..flops import forward_flops
from ..attention import ATTENTIONS
from ..backends import BackendUnavailable, Runner
from ..backends.pytorch import COMPILE_OPTIONS, torch_runner

LAYER_BACKENDS = tuple(COMPILE_OPTIONS)
VIT_S_DIM, VIT_S_HEADS = 384, 6


def tokens_for(resolution: int, patch: int, prefix: int = 1) -> int:
    """Tokens per image: class token(s) plus one per patch of a square image."""
    return prefix + (resolution // patch) ** 2


def build_layer(attention: str, dim: int = VIT_S_DIM, heads: int = VIT_S_HEADS, **kwargs: Any) -> nn.Module:
    if attention not in ATTENTIONS:
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(sorted(ATTENTIONS))}")
    torch.manual_seed(0)
    return ATTENTIONS[attention](dim, num_heads=heads, qkv_bias=True, **kwargs).eval()


def layer_input(batch: int, resolution: int, patch: int, dim: int) -> np.ndarray:
    n = tokens_for(resolution, patch)
    return np.random.default_rng(0).standard_normal((batch, n, dim), dtype=np.float32)


class OnGrid(nn.Module):
    """An attention layer called on a fixed patch grid: forward(x [B, N, dim]) = layer(x, grid=grid)."""

    def __init__(self, layer: nn.Module, grid: tuple[int, int]) -> None:
        super().__init__()
        self.layer, self.grid = layer, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x, grid=self.grid)


def layer_flops(layer: nn.Module, resolution: int, patch: int, dim: int) -> int:
    """Forward FLOPs of the layer for one image's tokens."""
    grid = (resolution // patch, resolution // patch)
    return forward_flops(OnGrid(layer, grid), torch.zeros(1, tokens_for(resolution, patch), dim))


def load_layer_runner(config: dict[str, Any]) -> Runner:
    """A Runner over the layer of `config` (attention, attention_kwargs, dim, heads, patch, resolution)."""
    backend, precision = config["backend"], config["precision"]
    if backend not in LAYER_BACKENDS:
        raise BackendUnavailable(
            f"--layer-only times the PyTorch module; backend {backend!r} is not supported there "
            f"(use {', '.join(LAYER_BACKENDS)})"
        )
    layer = build_layer(config["attention"], config["dim"], config["heads"], **config.get("attention_kwargs", {}))
    side = config["resolution"] // config["patch"]
    return module_runner(OnGrid(layer, (side, side)), backend, precision)


def module_runner(module: nn.Module, backend: str, precision: str) -> Runner:
    """A Runner over an in-memory PyTorch module (eager, torch.compile, or torch.compile with CUDA
    graphs: `backends.pytorch.COMPILE_OPTIONS`, the same settings the run backends use), on the GPU
    when there is one: the layer-only study times a module that has no run directory of its own.
    Raises BackendUnavailable for CUDA graphs without a GPU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch_runner(module, backend, precision, device)
