"""Inputs and references the attention tests share (a helper module, not collected): random
q/k/v of HEADS heads, a mechanism called on a fixed patch grid, the q/k/v a trained model
captured (tests/data/README.md) and dense masked attention as the atrous reference."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F

HEADS, HEAD_DIM = 4, 32
DIM = HEADS * HEAD_DIM


def qkv(n: int, scale: float = 1.0, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, n, HEAD_DIM)
    return (torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale,
            torch.randn(shape, generator=g))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


class with_grid:
    """A mechanism called on a fixed patch grid: the grid argument filled in for every call."""

    def __init__(self, module, grid):
        self.module, self.grid = module, grid

    def __call__(self, x):
        return self.module(x, grid=self.grid)

    def attend(self, q, k, v):
        return self.module.attend(q, k, v, self.grid)

    def _landmarks(self, x, prefix):
        return self.module._landmarks(x, self.grid, prefix)

    def eval(self):
        self.module.eval()
        return self

    def __getattr__(self, name):
        return getattr(self.module, name)


TRAINED_GRIDS = {"128": (16, 16), "256": (32, 32)}


@functools.lru_cache(maxsize=1)
def _trained_tensors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(__file__).parent / "data" / "cluttered_qkv.safetensors"))


def trained_qkv(resolution: str, block: str):
    """q, k, v of one image in block `block` of a trained exact ViT (cluttered digits, 3 heads of
    32) at `resolution` px: 1 class + 256 or 1,024 patch tokens (tests/data/README.md)."""
    return tuple(_trained_tensors()[f"{resolution}/{block}/{name}"].float() for name in "qkv")


def atrous_reference(q, k, v, grid, window, dilation, table=None):
    """One atrous branch as dense masked attention: patch query i sees patch key j when they
    share the dilation residue and their sub-grid positions share a window_size x window_size
    window, plus every prefix key; `table` [heads, 2w - 1, 2w - 1] adds relative position bias."""
    H, W = grid
    P = q.shape[2] - H * W
    r, c = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    same = (r[:, None] % dilation == r[None] % dilation) & (c[:, None] % dilation == c[None] % dilation)
    same &= ((r[:, None] // dilation) // window == (r[None] // dilation) // window)
    same &= ((c[:, None] // dilation) // window == (c[None] // dilation) // window)
    bias = torch.where(same, 0.0, float("-inf")).expand(HEADS, -1, -1).clone()
    if table is not None:
        wr, wc = (r // dilation) % window, (c // dilation) % window
        bias = bias + table[:, wr[:, None] - wr[None] + window - 1, wc[:, None] - wc[None] + window - 1]
    bias = torch.cat([torch.zeros(HEADS, H * W, P), bias], dim=-1)
    return F.scaled_dot_product_attention(q[:, :, P:], k, v, attn_mask=bias)
