"""Regional + atrous window attention, after ACC-ViT (Ibtehaz et al. 2024, "ACC-ViT: Atrous
Convolution's Comeback in Vision Transformers", arXiv:2403.04200).

Patch tokens attend inside windows of `window_size` x `window_size` tokens. Dilation 1 gives
regional (Swin-style, non-overlapping) windows; dilation d gives atrous windows whose tokens
lie d apart, i.e. window attention on each of the d x d interleaved sub-grids, the attention
analogue of a dilated convolution (the reshape/permute form of DiNAT's dilation, which unlike
NATTEN exports to ONNX). One branch per dilation in `dilations`; a token-wise gate (softmax over
branches of a linear map of the query, zero-initialised so the branches start equally weighted)
fuses them, as ACC-ViT's shared-MLP gating does. Prefix (class/register) tokens attend to every
token and every window also sees them as keys, so global information still flows.

The patch grid (H, W) is read per forward (`TimmAttention.grid`), so any resolution and aspect
ratio works: the grid is padded up to whole windows and padded keys are masked out. With one
window covering the whole grid and dilations=(1,) the module is exact attention.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention

_MASKED = -1e4  # additive bias for padded keys: finite, so an all-padding window gives no NaN


def to_windows(x: torch.Tensor, window: int, dilation: int) -> torch.Tensor:
    """[B, h, Hp, Wp, c] -> [B, h, windows, window * window, c]; Hp, Wp multiples of window * dilation."""
    B, h, Hp, Wp, c = x.shape
    block = window * dilation
    x = x.reshape(B, h, Hp // block, window, dilation, Wp // block, window, dilation, c)
    x = x.permute(0, 1, 2, 4, 5, 7, 3, 6, 8)
    return x.reshape(B, h, (Hp // block) * (Wp // block) * dilation * dilation, window * window, c)


def from_windows(x: torch.Tensor, window: int, dilation: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of `to_windows`: [B, h, windows, window * window, c] -> [B, h, Hp, Wp, c]."""
    B, h, _, _, c = x.shape
    block = window * dilation
    x = x.reshape(B, h, Hp // block, dilation, Wp // block, dilation, window, window, c)
    x = x.permute(0, 1, 2, 6, 3, 4, 7, 5, 8)
    return x.reshape(B, h, Hp, Wp, c)


class AtrousAttention(TimmAttention):
    """Gated fusion of regional and dilated window attention; prefix tokens attend globally."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 7,
        dilations: Sequence[int] = (1, 2, 3),
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        dilations = tuple(int(d) for d in dilations)
        if window_size < 1 or not dilations or min(dilations) < 1 or len(set(dilations)) != len(dilations):
            raise ValueError(
                f"window_size must be >= 1 and dilations distinct positive integers, "
                f"got window_size={window_size}, dilations={dilations}"
            )
        self.window_size = window_size
        self.dilations = dilations
        self.gate = None
        if len(dilations) > 1:
            self.gate = nn.Linear(
                self.attn_dim, len(dilations), device=kwargs.get("device"), dtype=kwargs.get("dtype")
            )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.gate is not None and not self.gate.weight.is_meta:
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)

    def _branch(self, q, k, v, prefix_k, prefix_v, H, W, dilation):
        """Window attention of patch queries at one dilation -> [B, h, H * W, c]."""
        B, h, _, _, c = q.shape
        w = self.window_size
        block = w * dilation
        Hp = (H + block - 1) // block * block
        Wp = (W + block - 1) // block * block
        pad = (0, 0, 0, Wp - W, 0, Hp - H)
        qw, kw, vw = (to_windows(F.pad(t, pad), w, dilation) for t in (q, k, v))
        windows, P, L = qw.shape[2], prefix_k.shape[2], w * w
        kw = torch.cat([kw, prefix_k.unsqueeze(2).expand(-1, -1, windows, -1, -1)], dim=3)
        vw = torch.cat([vw, prefix_v.unsqueeze(2).expand(-1, -1, windows, -1, -1)], dim=3)
        rows = torch.arange(Hp, device=q.device) < H
        cols = torch.arange(Wp, device=q.device) < W
        inside = (rows[:, None] & cols[None, :]).reshape(1, 1, Hp, Wp, 1)
        key_ok = to_windows(inside, w, dilation).reshape(1, 1, windows, L)
        key_ok = torch.cat([key_ok, key_ok.new_ones(1, 1, windows, P)], dim=3)
        bias = torch.where(key_ok, 0.0, _MASKED).to(q.dtype)
        bias = bias.unsqueeze(3).expand(1, h, windows, 1, L + P).reshape(1, h * windows, 1, L + P)
        out = F.scaled_dot_product_attention(
            qw.reshape(B, h * windows, L, c),
            kw.reshape(B, h * windows, L + P, c),
            vw.reshape(B, h * windows, L + P, c),
            attn_mask=bias,
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )
        out = from_windows(out.reshape(B, h, windows, L, c), w, dilation, Hp, Wp)
        return out[:, :, :H, :W].reshape(B, h, H * W, c)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, h, N, c = q.shape
        H, W, P = self.patch_grid(N)
        prefix_out = F.scaled_dot_product_attention(
            q[:, :, :P], k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        grid_q, grid_k, grid_v = (t[:, :, P:].reshape(B, h, H, W, c) for t in (q, k, v))
        branches = [
            self._branch(grid_q, grid_k, grid_v, k[:, :, :P], v[:, :, :P], H, W, d)
            for d in self.dilations
        ]
        if self.gate is None:
            patch_out = branches[0]
        else:
            weights = self.gate(q[:, :, P:].transpose(1, 2).reshape(B, H * W, h * c)).softmax(-1)
            weights = weights.transpose(1, 2).unsqueeze(-1).to(q.dtype)
            patch_out = sum(weights[:, i : i + 1] * b for i, b in enumerate(branches))
        return torch.cat([prefix_out, patch_out], dim=2)
