"""Regional + atrous window attention, after ACC-ViT (Ibtehaz et al. 2024, "ACC-ViT: Atrous
Convolution's Comeback in Vision Transformers", arXiv:2403.04200).

Patch tokens attend inside windows of `window_size` x `window_size` tokens. Dilation 1 gives
regional (Swin-style, non-overlapping) windows; dilation d gives atrous windows whose tokens
lie d apart, i.e. window attention on each of the d x d interleaved sub-grids, the attention
analogue of a dilated convolution (the reshape/permute form of DiNAT's dilation, which unlike
NATTEN exports to ONNX). One branch per dilation; a token-wise gate (softmax over branches of
a linear map of the query, zero-initialised so the branches start equally weighted) fuses them.
Prefix (class/register) tokens attend to every token and every window also sees them as keys.

Where it follows ACC-ViT: atrous windows by interleaved sub-sampling, parallel branches fused
by input-dependent gating, `dilations="pow2"` for its power-of-two rates (1, 2, 4, ... while a
sub-grid of the training grid still holds a whole window: 1, 2, 4, 8 on a 56x56 grid with
window 7, 1, 2 on a ViT-S/16's 14x14) and `position_bias=True` for a learned relative position
bias inside windows (one table per branch and head, as in its MaxViT-style window attention).
Where it departs: it is one attention layer for a plain single-stage ViT, not ACC-ViT's
hierarchical network (no MBConv, no shared-MLP gating module, no grid attention, no stage-wise
rates), the gate is a linear map of the query rather than of the pooled input, the position
bias starts at zero (so a pretrained ViT, and the exact limit below, are unchanged at
initialisation), and the default dilations stay (1, 2, 3).

The patch grid (H, W) comes with each forward (`TimmAttention.forward(x, grid=)`), so any resolution and aspect
ratio works. A window never extends past its sub-grid: at dilation d it is
min(window_size, ceil(H / d)) rows by min(window_size, ceil(W / d)) columns, which leaves the
keys every query sees unchanged while padding 14x14 at window 7, dilation 3 to 15x15 instead
of 21x21; the remaining padding is masked out. With one window covering the whole grid and
dilations=(1,) the module is exact attention.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention, size_min

torch.fx.wrap("size_min")

_MASKED = -1e4  # additive bias for padded keys: finite, so an all-padding window gives no NaN


def to_windows(x: torch.Tensor, window: tuple, dilation: int) -> torch.Tensor:
    """[B, h, Hp, Wp, c] -> [B, h, windows, wh * ww, c]; Hp, Wp multiples of wh * dilation, ww * dilation."""
    B, h, Hp, Wp, c = x.shape
    wh, ww = window
    x = x.reshape(B, h, Hp // (wh * dilation), wh, dilation, Wp // (ww * dilation), ww, dilation, c)
    x = x.permute(0, 1, 2, 4, 5, 7, 3, 6, 8)
    return x.reshape(B, h, (Hp // (wh * dilation)) * (Wp // (ww * dilation)) * dilation * dilation, wh * ww, c)


def from_windows(x: torch.Tensor, window: tuple, dilation: int, Hp: int, Wp: int) -> torch.Tensor:
    """Inverse of `to_windows`: [B, h, windows, wh * ww, c] -> [B, h, Hp, Wp, c]."""
    B, h, _, _, c = x.shape
    wh, ww = window
    x = x.reshape(B, h, Hp // (wh * dilation), dilation, Wp // (ww * dilation), dilation, wh, ww, c)
    x = x.permute(0, 1, 2, 6, 3, 4, 7, 5, 8)
    return x.reshape(B, h, Hp, Wp, c)


def power_of_two_dilations(grid: tuple[int, int], window: int) -> tuple[int, ...]:
    """ACC-ViT's rates: 1, 2, 4, ... while the shorter side of `grid` / rate still holds a window."""
    rates = [1]
    while min(grid) // (rates[-1] * 2) >= window:
        rates.append(rates[-1] * 2)
    return tuple(rates)


class AtrousAttention(TimmAttention):
    """Gated fusion of regional and dilated window attention; prefix tokens attend globally."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        window_size: int = 7,
        dilations: Union[Sequence[int], str] = (1, 2, 3),
        position_bias: bool = False,
        grid_size: tuple[int, int] = (14, 14),
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if isinstance(dilations, str):
            if dilations != "pow2":
                raise ValueError(f"dilations must be integers or 'pow2' (ACC-ViT's rates), got {dilations!r}")
            dilations = power_of_two_dilations(tuple(grid_size), window_size)
        dilations = tuple(int(d) for d in dilations)
        if window_size < 1 or not dilations or min(dilations) < 1 or len(set(dilations)) != len(dilations):
            raise ValueError(
                f"window_size must be >= 1 and dilations distinct positive integers, "
                f"got window_size={window_size}, dilations={dilations}"
            )
        self.window_size = window_size
        self.dilations = dilations
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.gate = nn.Linear(self.attn_dim, len(dilations), **dd) if len(dilations) > 1 else None
        self.position_bias = None
        if position_bias:
            span = 2 * window_size - 1
            self.position_bias = nn.Parameter(torch.empty(len(dilations), num_heads, span, span, **dd))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        for p in (self.gate and self.gate.weight, self.gate and self.gate.bias, self.position_bias):
            if p is not None and not p.is_meta:
                nn.init.zeros_(p)

    def _window_bias(self, branch: int, window: tuple, device: torch.device) -> torch.Tensor:
        """[heads, L, L] relative position bias of a wh x ww window, L = wh * ww."""
        wh, ww = window
        span = 2 * self.window_size - 1
        rows, cols = torch.arange(wh, device=device), torch.arange(ww, device=device)
        dr = rows[:, None] - rows[None, :] + (self.window_size - 1)
        dc = cols[:, None] - cols[None, :] + (self.window_size - 1)
        index = (dr[:, None, :, None] * span + dc[None, :, None, :]).reshape(wh * ww, wh * ww)
        return self.position_bias[branch].flatten(1)[:, index.flatten()].reshape(-1, wh * ww, wh * ww)

    def _branch(self, q, k, v, prefix_k, prefix_v, H, W, branch):
        """Window attention of patch queries at one dilation -> [B, h, H * W, c]."""
        B, h, _, _, c = q.shape
        d = self.dilations[branch]
        window = (size_min(self.window_size, (H + d - 1) // d), size_min(self.window_size, (W + d - 1) // d))
        Hp = (H + window[0] * d - 1) // (window[0] * d) * (window[0] * d)
        Wp = (W + window[1] * d - 1) // (window[1] * d) * (window[1] * d)
        pad = (0, 0, 0, Wp - W, 0, Hp - H)
        qw, kw, vw = (to_windows(F.pad(t, pad), window, d) for t in (q, k, v))
        windows, P, L = qw.shape[2], prefix_k.shape[2], qw.shape[3]
        kw = torch.cat([kw, prefix_k.unsqueeze(2).expand(-1, -1, windows, -1, -1)], dim=3)
        vw = torch.cat([vw, prefix_v.unsqueeze(2).expand(-1, -1, windows, -1, -1)], dim=3)
        rows = torch.arange(Hp, device=q.device) < H
        cols = torch.arange(Wp, device=q.device) < W
        inside = (rows[:, None] & cols[None, :]).reshape(1, 1, Hp, Wp, 1)
        key_ok = to_windows(inside, window, d).reshape(1, 1, windows, L)
        key_ok = torch.cat([key_ok, key_ok.new_ones(1, 1, windows, P)], dim=3)
        bias = torch.where(key_ok, 0.0, _MASKED).to(q.dtype).unsqueeze(3)  # [1, 1, windows, 1, L + P]
        if self.position_bias is None:
            bias = bias.expand(1, h, windows, 1, L + P).reshape(1, h * windows, 1, L + P)
        else:
            position = F.pad(self._window_bias(branch, window, q.device), (0, P)).to(q.dtype)
            bias = (bias + position.unsqueeze(1).unsqueeze(0)).reshape(1, h * windows, L, L + P)
        out = F.scaled_dot_product_attention(
            qw.reshape(B, h * windows, L, c),
            kw.reshape(B, h * windows, L + P, c),
            vw.reshape(B, h * windows, L + P, c),
            attn_mask=bias,
            dropout_p=self.attn_drop.p if self.training else 0.0,
        )
        out = from_windows(out.reshape(B, h, windows, L, c), window, d, Hp, Wp)
        return out[:, :, :H, :W].reshape(B, h, H * W, c)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        B, h, N, c = q.shape
        H, W, P = self.patch_grid(N, grid)
        prefix_out = F.scaled_dot_product_attention(
            q[:, :, :P], k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        grid_q, grid_k, grid_v = (t[:, :, P:].reshape(B, h, H, W, c) for t in (q, k, v))
        branches = [
            self._branch(grid_q, grid_k, grid_v, k[:, :, :P], v[:, :, :P], H, W, i)
            for i in range(len(self.dilations))
        ]
        if self.gate is None:
            patch_out = branches[0]
        else:
            weights = self.gate(q[:, :, P:].transpose(1, 2).reshape(B, H * W, h * c)).softmax(-1)
            weights = weights.transpose(1, 2).unsqueeze(-1).to(q.dtype)
            patch_out = sum(weights[:, i : i + 1] * b for i, b in enumerate(branches))
        return torch.cat([prefix_out, patch_out], dim=2)
