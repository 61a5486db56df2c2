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
of 21x21; padded keys are excluded exactly (a boolean mask, never a finite stand-in such as
-1e4, which let padded zero keys win once real scores fell below it; a padding query slot
sees itself, so no row is ever fully masked). With one window covering the whole grid and
dilations=(1,) the module is exact attention.

Two execution paths, equal to 1e-5 in fp32 (tests/test_attention_kernels.py,
tests/test_atrous_paths.py):

- CUDA (eager or torch.compile; inference, and training without attention dropout, which
  FlexAttention lacks): FlexAttention (torch.nn.attention.flex_attention) per branch on the raw
  token order, the regional/dilated windows and the prefix keys a block mask (built once per
  grid and cached), the position bias a score_mod; each call compiles to one fused forward and
  one fused backward kernel, so no window copy, padding or mask tensor is written.
- Everything else (CPU, training with attention dropout, torch.export / ONNX / TensorRT):
  window partition, one branch at a time. A branch's windows are gathered by one index per
  tensor (a constant of the grid, cached in eager, computed with min / floor division of the
  sizes in an exported graph) into a [B * heads, windows, slots, head_dim] batch for one fused
  `F.scaled_dot_product_attention` call (the windows as its heads, a boolean mask only where
  a window is padded) and indexed back to token order. In eager, a branch whose padded windows
  would hold over 1.5x the patches runs in two bands of window rows (`_patches`).

On the CPU FlexAttention is the slow path: one fp32 forward of ViT-S/16 at 512 px, batch 2,
takes 503 ms through the window partition (446 ms compiled; the attention-free bound 298 ms),
6.3 s through FlexAttention's eager fallback and 4.4 s through inductor's CPU FlexAttention
template (benchmarks/atrous_cpu_paths.py; benchmarks/results/atrous_cpu_paths.md), hence CUDA
only.

Memory: only one branch's windows live at a time, so inference peak memory is exact
attention's; in training each weighted branch is recomputed in backward
(`base.recompute_in_backward`, a `torch.utils.checkpoint`), so neither window copies nor branch outputs are saved and the
training peak is exact's too (both paths). All of it in the compute dtype (bf16/fp16 under
autocast); nothing needs fp32 (softmax accumulates in fp32 inside the fused kernels).
CPU proxies of GPU cost (benchmarks/attention_proxies.py; bf16 autocast, ViT-S/16, depth 12):
at 512 px, batch 2, the window path dispatches 96.5 aten ops per block (0.3.0: 206.5; 61.5
when all branches were gathered at once, which held 2.05x exact's peak memory) and writes
1.94x the attention-free bound's bytes (3dad674, before issue 19: 3.20x), the CUDA path 58.5
ops and 1.27x (each FlexAttention call counted as its one kernel); inference peak 1.00x exact's
on both, and 1.00x for one training forward + backward at 1024 px (2.9x before the recompute).
Bytes stay above 1.5x on the window path by construction. There a block of the bound writes
37.9 MiB, so 1.5x leaves 19 MiB for attention, and one [B, N, dim] bf16 tensor is 1.5 MiB.
Each gathered branch writes at least six such tensors: its q, k and v window copies, its
output, the output's way back to token order, and its share of the gated sum. That is 9 MiB a
branch before padding, 27 MiB for the three default branches, and the default 7 x 7 windows
pad the 32 x 32 grid by 1.2-1.7x. Only views (no copies) of q and of the output could go
lower, and they exist only for grids that need no padding.
"""
from __future__ import annotations

import functools
from types import MappingProxyType
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention, exporting, index_div, recompute_in_backward, size_max, size_min

torch.fx.wrap("size_min")
torch.fx.wrap("size_max")


def power_of_two_dilations(grid: tuple[int, int], window: int) -> tuple[int, ...]:
    """ACC-ViT's rates: 1, 2, 4, ... while the shorter side of `grid` / rate still holds a window."""
    rates = [1]
    while min(grid) // (rates[-1] * 2) >= window:
        rates.append(rates[-1] * 2)
    return tuple(rates)


def window_layout(window_size: int, dilations: tuple, H, W, P, device: torch.device):
    """Where every branch's windows take their tokens on an H x W patch grid after P prefix tokens,
    as index tensors (sizes may be symbolic: only min, max and floor division of them).

    Returns (query_index [T * L], key_index [T * (L + P)], mask [T, L, L + P], inverse
    [branches * H * W], windows per branch, (dilation, wh, ww) per branch), T the windows of
    all branches, L the largest window: slot s of window t holds token query_index[t * L + s]
    (a padding slot holds any token: masked as a key, dropped as a query); inverse[b * H * W
    + p] is patch p's slot in branch b's windows."""
    L = None
    parts = []
    for d in dilations:
        wh = size_min(window_size, (H + d - 1) // d)
        ww = size_min(window_size, (W + d - 1) // d)
        parts.append((d, wh, ww))
        L = wh * ww if L is None else size_max(L, wh * ww)
    query_index, inverse, counts, offset = [], [], [], 0
    r_of = torch.arange(H, device=device)[:, None]
    c_of = torch.arange(W, device=device)[None, :]
    for d, wh, ww in parts:
        nr, nc = (H + wh * d - 1) // (wh * d), (W + ww * d - 1) // (ww * d)
        # padded coordinates of slot (a, e, b, f, i, j): window (a, e, b, f), position (i, j)
        a, e, i = (torch.arange(n, device=device) for n in (nr, d, wh))
        b, f, j = (torch.arange(n, device=device) for n in (nc, d, ww))
        r = (a[:, None, None] * (wh * d) + i[None, None, :] * d + e[None, :, None])[:, :, None, None, :, None]
        c = (b[:, None, None] * (ww * d) + j[None, None, :] * d + f[None, :, None])[None, None, :, :, None, :]
        inside = (r < H) & (c < W)
        token = torch.where(inside, P + r * W + c, -1).reshape(nr * d * nc * d, wh * ww)
        query_index.append(F.pad(token, (0, L - wh * ww), value=-1))  # -1: a padding slot
        r_block, c_block = index_div(r_of, wh * d), index_div(c_of, ww * d)
        window = (r_block * d + r_of % d) * (nc * d) + c_block * d + c_of % d
        slot = index_div(r_of - r_block * (wh * d), d) * ww + index_div(c_of - c_block * (ww * d), d)
        inverse.append((offset + window * L + slot).flatten())
        counts.append(nr * d * nc * d)
        offset = offset + nr * d * nc * d * L
    query_index = torch.cat(query_index)
    valid = query_index >= 0
    query_index = torch.where(valid, query_index, 0)  # padding slots read token 0: masked as keys, dropped as queries
    T = query_index.shape[0]
    prefix = torch.arange(P, device=device).expand(T, P)
    key_index = torch.cat([query_index, prefix], dim=1)
    # keys: padding slots never attend (exact: a boolean mask, no finite stand-in); a padding
    # query slot sees itself so that no row is fully masked (its output is dropped)
    key_ok = torch.cat([valid, valid.new_ones(T, P)], dim=1)
    mask = key_ok[:, None, :] | torch.eye(L, L + P, dtype=torch.bool, device=device)[None]
    return query_index.flatten(), key_index.flatten(), mask, torch.cat(inverse), counts, parts


def _row_bands(window_size: int, dilation: int, H: int) -> list[tuple[int, int]]:
    """One branch's bands of grid rows, (r0, r1) pairs: two when its windows form two or more
    rows (the first ceil(rows / 2) window rows, then the rest), else all rows."""
    height = min(window_size, -(-H // dilation)) * dilation
    window_rows = -(-H // height)
    if window_rows < 2:
        return [(0, H)]
    cut = -(-window_rows // 2) * height
    return [(0, cut), (cut, H)]


def _padded_area(window_size: int, dilation: int, H: int, W: int) -> int:
    """Token slots of one branch's windows on an H x W grid, padding included."""
    wh, ww = min(window_size, -(-H // dilation)), min(window_size, -(-W // dilation))
    return -(-H // (wh * dilation)) * wh * dilation * -(-W // (ww * dilation)) * ww * dilation


class AtrousAttention(TimmAttention):
    """Gated fusion of regional and dilated window attention; prefix tokens attend globally."""

    display_rank = 4
    tiny_settings = MappingProxyType({"window_size": 2, "dilations": (1, 2)})

    @classmethod
    def error_budgets(cls, grid: int) -> list[dict]:
        """Windows of a quarter and half of the training grid with rates (1, 2, 3), the quarter
        window with ACC-ViT's power-of-two rates, and one window over the whole grid (exact)."""
        return [{"window_size": max(2, grid // 4), "dilations": (1, 2, 3)},
                {"window_size": max(2, grid // 4), "dilations": "pow2"},
                {"window_size": max(2, grid // 2), "dilations": (1, 2, 3)},
                {"window_size": grid, "dilations": (1,)}]

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

    def _window_branch(self, branch: int, q, k, v, H, W, P, rows: tuple = (0, None)) -> torch.Tensor:
        """One branch's outputs [B, heads, (r1 - r0) * W, head_dim] for the patches of grid rows
        rows = (r0, r1) (default all; r0 a multiple of the branch's window height x dilation, so
        its windows are the branch's windows there) by window partition (CPU eager, ONNX and
        TensorRT): the windows gathered by one index per tensor (a constant of the grid, cached
        in eager, computed with min / floor division of the sizes in an exported graph) into a
        [B * heads, windows, slots, head_dim] batch, one `F.scaled_dot_product_attention` call
        with the windows as its heads, and one index back to token order."""
        B, h, N, c = q.shape
        d = self.dilations[branch]
        r0, r1 = rows[0], H if rows[1] is None else rows[1]
        if all(isinstance(x, int) for x in (H, W, P)) and not torch.compiler.is_compiling():
            # eager: the layout is a constant of the grid, built once (no launches per forward)
            query_index, key_index, mask, inverse, T, L = _cached_layout(self.window_size, d, r0, r1, W, P, str(q.device))
        else:
            query_index, key_index, mask, inverse, _, _ = window_layout(self.window_size, (d,), H, W, P, q.device)
            T, L, mask = mask.shape[0], mask.shape[1], mask[None]
        qw = q.index_select(2, query_index).view(B * h, T, L, c)
        kw = k.index_select(2, key_index).view(B * h, T, L + P, c)
        vw = v.index_select(2, key_index).view(B * h, T, L + P, c)
        if self.position_bias is not None:
            wh = size_min(self.window_size, (r1 - r0 + d - 1) // d)
            table = self._window_bias(branch, (wh, L // wh), q.device).to(q.dtype)  # [h, L, L]
            table = F.pad(table, (0, P)).expand(B, h, L, L + P).reshape(B * h, 1, L, L + P)
            mask = table if mask is None else table.masked_fill(~mask, float("-inf"))  # [B * h, T, L, L + P]
        out = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask,
                                             dropout_p=self.attn_drop.p if self.training else 0.0)
        del qw, kw, vw, mask  # not held while the output goes back to token order
        return out.view(B, h, T * L, c).index_select(2, inverse)

    def _flex_branch(self, branch: int, q, k, v, H, W, P) -> torch.Tensor:
        """One branch's patch outputs [B, heads, H * W, head_dim] through FlexAttention: one fused
        kernel on the raw token order, the windows a block mask (CUDA, inference and training)."""
        d = self.dilations[branch]
        wh, ww = min(self.window_size, -(-H // d)), min(self.window_size, -(-W // d))
        # eager: built once per grid; compiled: traced into the graph (Dynamo ignores lru_cache, and says so)
        build = _atrous_block_mask.__wrapped__ if torch.compiler.is_compiling() else _atrous_block_mask
        block_mask = build(H, W, P, q.shape[2], d, wh, ww, str(q.device))
        score_mod = None
        if self.position_bias is not None:
            score_mod = _position_score_mod(self.position_bias[branch].to(q.dtype), H, W, P, d, wh, ww, self.window_size)
        return _flex_attention(q[:, :, P:], k, v, score_mod=score_mod, block_mask=block_mask)

    def _branch(self, i: int, q, k, v, H, W, P, flex: bool, bands: list, weight=None) -> torch.Tensor:
        """Branch i's outputs [B, heads, H * W, head_dim], times `weight` [B, 1, H * W, 1] if given."""
        if flex:
            o = self._flex_branch(i, q, k, v, H, W, P)
        else:
            o = [self._window_branch(i, q, k, v, H, W, P, rows) for rows in bands]
            o = o[0] if len(o) == 1 else torch.cat(o, dim=2)
        return o if weight is None else o * weight

    def _patches(self, q, k, v, weights, H, W, P, flex: bool, recompute: bool = False) -> torch.Tensor:
        """The gated sum of the branches, [B, heads, H * W, head_dim]; weights [B, branches, 1,
        H * W, 1] or None for one branch.

        Peak memory: one branch's windows live at a time, the most padded branch first (while
        no sum is held yet), and in eager a branch whose padded windows hold over 1.5x the
        patches (and that has two or more rows of windows) gathers and attends them in two
        bands of rows: that halves what it holds and trims its padding (a band's windows are
        the branch's windows there), for one more write of its output (the bands joined).
        With `recompute` (training) each weighted branch runs under `recompute_in_backward`
        (a plain checkpoint in eager; under torch.compile its partitioner decides):
        backward recomputes one branch at a time from q, k, v and its weights, so neither the
        gathered windows nor the branch outputs are saved (identical results; dropout replays
        its random state)."""
        n = len(self.dilations)
        bands, order = [[(0, None)]] * n, range(n)  # FlexAttention, traced graphs (symbolic sizes): one band
        if not flex and all(isinstance(x, int) for x in (H, W, P)) and not torch.compiler.is_compiling():
            area = [_padded_area(self.window_size, d, H, W) for d in self.dilations]
            bands = [_row_bands(self.window_size, d, H) if a > 1.5 * H * W else [(0, H)] for d, a in zip(self.dilations, area)]
            order = sorted(order, key=lambda i: -area[i])
        ws = [None] * n if weights is None else weights.unbind(1)
        out = None
        for i in order:
            if recompute:
                def branch(q, k, v, *weight, i=i):
                    return self._branch(i, q, k, v, H, W, P, flex, bands[i], *weight)

                o = recompute_in_backward(branch, q, k, v, *([] if ws[i] is None else [ws[i]]), keep_attention=False)
                out = o if out is None else out + o
            else:
                o = self._branch(i, q, k, v, H, W, P, flex, bands[i])
                if ws[i] is None:
                    return o
                out = o * ws[i] if out is None else torch.addcmul(out, o, ws[i])  # one write per branch
            del o
        return out

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        """q, k, v [B, heads, N, head_dim] -> [B, heads, N, head_dim]; in training with autograd
        recording, the branches are recomputed in backward (`_patches`)."""
        B, h, N, c = q.shape
        H, W, P = self.patch_grid(N, grid)
        prefix_out = F.scaled_dot_product_attention(
            q[:, :, :P], k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        weights = None
        if self.gate is not None:
            # every token's q as [B, N, h * c] (a view of the qkv projection); weights [B, branches, 1, H * W, 1]
            weights = self.gate(q.transpose(1, 2).reshape(B, N, h * c)).softmax(-1).to(q.dtype)
            weights = weights.transpose(1, 2)[:, :, None, P:, None]
        flex = use_flex(q) and not (self.training and self.attn_drop.p > 0)  # FlexAttention has no dropout
        patches = self._patches(q, k, v, weights, H, W, P, flex, recompute=self.training and torch.is_grad_enabled())
        # laid out [B, N, heads, head_dim]: the output projection then reads it without a copy
        return torch.cat([prefix_out.transpose(1, 2), patches.transpose(1, 2)], dim=1).transpose(1, 2)


def use_flex(q: torch.Tensor) -> bool:
    """FlexAttention serves CUDA eager and torch.compile; export, FX tracing (q is then a proxy,
    not a tensor) and CPU take the window partition."""
    return isinstance(q, torch.Tensor) and q.is_cuda and not exporting() and not torch.onnx.is_in_onnx_export()


def _atrous_mask_mod(H: int, W: int, P: int, d: int, wh: int, ww: int):
    """FlexAttention mask_mod of one branch: query patch (over patches only) and key token (all
    N): prefix keys always, patch keys sharing the query's dilation residue and window."""

    def mask_mod(b, head, q_idx, kv_idx):
        kp = kv_idx - P
        qr, qc, kr, kc = q_idx // W, q_idx % W, kp // W, kp % W
        same = (qr % d == kr % d) & (qc % d == kc % d)
        same = same & ((qr // d) // wh == (kr // d) // wh) & ((qc // d) // ww == (kc // d) // ww)
        return (kv_idx < P) | same

    return mask_mod


@functools.lru_cache(maxsize=64)
def _cached_layout(window_size: int, dilation: int, r0: int, r1: int, W: int, P: int, device: str):
    """window_layout of grid rows r0..r1 (indices of the whole token sequence), mask None where
    no window is padded, and the window count and size: (query_index, key_index, mask [1, T, L,
    L + P] or None, inverse, T, L)."""
    # ordinary tensors even when first built under torch.inference_mode(): a later training step
    # may save them for backward
    with torch.inference_mode(False):
        query_index, key_index, mask, inverse, _, _ = window_layout(window_size, (dilation,), r1 - r0, W, P, torch.device(device))
        shift = lambda index: torch.where(index >= P, index + r0 * W, index)  # noqa: E731 (patch tokens of the band)
        T, L = mask.shape[:2]
        unpadded = mask.device.type != "meta" and bool(mask.all())
        return shift(query_index), shift(key_index), None if unpadded else mask[None], inverse, T, L


@functools.lru_cache(maxsize=32)
def _atrous_block_mask(H: int, W: int, P: int, N: int, d: int, wh: int, ww: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    with torch.inference_mode(False):
        return create_block_mask(_atrous_mask_mod(H, W, P, d, wh, ww), None, None, H * W, N, device=device)


def _position_score_mod(table: torch.Tensor, H: int, W: int, P: int, d: int, wh: int, ww: int, window: int):
    """Adds table[head, dr + window - 1, dc + window - 1] for patch keys (relative window position)."""

    def score_mod(score, b, head, q_idx, kv_idx):
        kp = torch.clamp(kv_idx - P, min=0)
        dr = ((q_idx // W) // d) % wh - ((kp // W) // d) % wh + window - 1
        dc = ((q_idx % W) // d) % ww - ((kp % W) // d) % ww + window - 1
        return torch.where(kv_idx < P, score, score + table[head, dr, dc])

    return score_mod


def _flex_attention(q, k, v, score_mod=None, block_mask=None):
    from torch.nn.attention.flex_attention import flex_attention

    if torch.compiler.is_compiling() or not q.is_cuda:
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX(q, k, v, score_mod=score_mod, block_mask=block_mask)


_COMPILED_FLEX = None
