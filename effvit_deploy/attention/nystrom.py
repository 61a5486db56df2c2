"""Nystromformer: a Nystrom-based approximation of self-attention
(Xiong et al. 2021, arXiv:2102.03902; official code mlpen/Nystromformer).

With landmark queries/keys Q~, K~, softmax(Q K^T) V is approximated as

    softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V,

O(N * m) in time and memory for m landmarks. Choices beyond the paper, each measured on the
query/key/value activations of two trained exact ViTs, one with near-uniform attention (digits)
and one with peaked attention (cluttered digits), at 257, 1,025 and 4,097 tokens
(benchmarks/nystrom_design.py; benchmarks/results/nystrom_design.md):

- Landmarks are 2-D. The paper pools contiguous segments of a text sequence; on a ViT's
  row-major patch sequence such a segment is a stripe of whole image rows, mixing unrelated
  patches. Here the `landmarks` patch landmarks are the means of the blocks of a
  rows x columns grid laid over the patch grid (`landmark_grid`: 16 -> 4x4, 32 -> 5x6, 64 -> 8x8
  on square grids; a side capped by the patch grid hands its budget to the other side, so 64
  landmarks on a 1x128 grid are 1x64 blocks, where 0.3.0 used 1x8; `landmarks_used(grid)` gives
  the count and a warning is logged once when fewer than asked are used on a grid with more
  patches), i.e. adaptive average pooling as for SOFT's bottleneck tokens (Lu et al.
  2021, arXiv:2110.11945); the grids for m and 2m are nested. Prefix (class/register) tokens
  are landmarks of their own, on top of `landmarks`. Without a known grid the sequence is
  pooled into contiguous segments as in the paper. At 1,025 tokens, 8 iterations, 16/32/64/128
  landmarks: cluttered 0.60/0.60/0.54/0.23 (1-D, class token averaged in, ridge 3e-4) ->
  0.30/0.23/0.16/0.09; digits 0.24/0.24/0.17/0.03 -> 0.13/0.07/0.03/0.01.
- Pseudo-inverse. The landmark kernel of a trained model is ill-conditioned (condition number
  1e7-1e19): the paper's iteration, run in fp32, diverges past ~20 iterations (NaN at 40), and
  even an exact pseudo-inverse amplifies the kernel's tiny singular directions.
  `iterative_pinv` runs the same iteration on the ridge-augmented matrix [A; mu I], which
  converges monotonically to the Tikhonov inverse (A^T A + mu^2 I)^-1 A^T with matmuls only
  (exports to ONNX and TensorRT), for any iteration count, in fp32 and under autocast (the
  kernels run in fp32).
- Ridge 2 / m (m: the kernel's size). With a small fixed ridge a converged inverse makes the
  approximation worse again on peaked attention (ridge 3e-4, 2-D landmarks, cluttered: the mean
  error rises by up to 0.55 between iteration counts; 1-D: 0.52 at 6, 2.33 at 16 iterations).
  The best ridge fell roughly as 1/m there (0.1 at 16 landmarks, 0.01-0.03 at 64-128); with
  2/m the mean error over blocks is non-increasing in iterations (0..64) and in landmarks
  (16..128) at every measured size on both models. Costs: near-uniform attention would prefer
  a smaller ridge (digits, 16 landmarks, 1,025 tokens: 0.128 against 0.048 with 3e-4), and on
  single heads of the peaked model the error can still dip a few percent below its converged
  value at 3-6 iterations (the Nystrom estimate, not the pseudo-inverse, is non-monotone there).
  Landmark means summarise a trained ViT's spatially smooth q/k; on unstructured random q/k
  of large norm they summarise nothing and the error is ~1 or above, rising with landmarks.
- Iterations: 8 by default, where the ridge inverse has converged (within 1e-4 of its fixed
  point on trained kernels; the mean error at 8 is within 2e-4 of 64 iterations everywhere
  measured); more iterations cost time and change nothing.
- Exact limit. When every patch token is a landmark (N <= landmarks + prefix) the output is
  exact attention, computed on those first tokens and selected with a tensor test, so eager
  and exported graphs agree at every size.

GPU form (0.4). Both [N, m] kernels are never written: softmax(Q~ K^T) V and softmax(Q K~^T) W
(W = pinv(...) softmax(Q~ K^T) V) are `F.scaled_dot_product_attention` calls (fused kernels on
CUDA and CPU) in the compute dtype (bf16/fp16 under autocast). The landmarks are one matmul of
q and k with a pooling matrix (prefix rows of the identity, then the block means), a constant
of the grid cached in eager. fp32 (fp64 for fp64 inputs) only for the small tensors that need
it: the [m, m] landmark kernel, whose condition number reaches 1e7-1e19 on trained models, its
ridge pseudo-inverse (four batched ops per iteration: one matmul, three baddbmm) and
the [m, d] product with it. Measured on a trained ViT's captured q/k/v (tests/data): bf16 and
fp16 leave the error against exact attention within 0.1% of the fp32 path's. One
bf16-autocast forward of ViT-S/16 at 512 px: 91.5 aten ops per block (0.3.0: 284.5; 99.5 with
five ops per iteration) and 1.38x the attention-free bound's bytes written (3dad674, before
issue 19: 3.04x);
benchmarks/results/attention_proxies.md. Training: the pseudo-inverse, whose iterations would
keep 5 MiB of fp32 intermediates per block (ViT-S/16, 1024 px, batch 1), is recomputed in
backward from the landmarks (`recompute_in_backward`, a `torch.utils.checkpoint`;
gradients unchanged): peak memory of a bf16 forward + backward of ViT-S/16 at 1024 px (4,097
tokens, batch 1) is 1.06x exact attention's at depth 12, 1.05x at depth 1 (0.4.0: 1.14x,
1.10x), for 4 * iterations + 15 more small ops per block in backward (a CPU training step of
a depth-2 model at 512 px, batch 2: 5-15% slower). Inference peak (bf16 autocast, batch 8;
benchmarks/results/inference_peak_sweep.md): equal to exact's up to 128 px (every patch a
landmark: exact attention) and from 224 px up to 2048 px (16,385 tokens), the landmark kernel
freed before the iterations and each iteration's factors as soon as they are used; in between
the fp32 iterations (at most seven [B * heads, m, m] tensors at once, z and b counting two)
outweigh the MLP's activation: 1.29x exact's at 160 px (101 tokens), 1.05x at 192 px.
Chunking the batch through the inverse would reach 1.00x with 2 chunks at 192 px and 3 at 160
px, at 146 and 199 aten ops per block instead of 90 (benchmarks/small_size_chunking.py;
benchmarks/results/small_size_chunking.md): at those sizes a GPU forward is launch-bound and
the memory saved is a few MiB (at most 2.4 MiB at batch 8), so it is not done.

An optional depthwise convolution over the sequence on V (the official code's residual,
kernel 33) is zero-initialised so a pretrained ViT starts unchanged.
"""
from __future__ import annotations

import functools
import logging
import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention, fp32_region, index_div, recompute_in_backward, size_min

torch.fx.wrap("size_min")

log = logging.getLogger(__name__)

PINV_RIDGE_SCALE = 2.0
PINV_ITERATIONS = 8


def segment_means(x: torch.Tensor, segments, dim: int = -2) -> torch.Tensor:
    """Means of x over `segments` <= n contiguous segments of near-equal size along `dim` (size n).

    Token i belongs to segment floor(i * segments / n), so segment j spans tokens
    ceil(j * n / segments) .. ceil((j + 1) * n / segments) - 1, and the segments for 2s refine
    those for s. Each segment's tokens are gathered into a [segments, longest] grid (short
    segments point at an appended zero) and summed: exact for any n, and a dynamic n survives
    export.
    """
    x = x.movedim(dim, -2)
    n = x.shape[-2]
    longest = (n + segments - 1) // segments
    bounds = index_div(torch.arange(segments + 1, device=x.device) * n + (segments - 1), segments)
    index = bounds[:-1, None] + torch.arange(longest, device=x.device)[None, :]
    index = torch.where(index < bounds[1:, None], index, n)
    padded = F.pad(x, (0, 0, 0, 1))
    sums = padded.index_select(-2, index.flatten()).unflatten(-2, (segments, longest)).sum(-2)
    means = sums / (bounds[1:] - bounds[:-1]).unsqueeze(-1).to(x.dtype)
    return means.movedim(-2, dim)


def landmark_grid(landmarks: int, grid=None) -> tuple[int, int]:
    """(rows, columns) of the block grid that pools `landmarks` patch landmarks on patch grid
    `grid` (H, W). Square grids get the most square factorisation rows * columns <= landmarks
    (16 -> 4x4, 32 -> 5x6, 64 -> 8x8); a side capped by the patch grid hands its budget to the
    other side, so thin grids keep the landmarks asked for (64 on 1x128 -> 1x64, on 128x1 ->
    64x1). Only min and floor division of the sizes: no shape branch, so an exported graph
    with dynamic H, W pools exactly as eager does. Fewer than `landmarks` are used only when the
    grid has fewer patches or `landmarks` has no such factorisation (`landmarks_used`)."""
    rows = math.isqrt(landmarks)
    if grid is None:
        return rows, landmarks // rows
    H, W = grid
    rows = size_min(rows, H)
    columns = size_min(W, landmarks // rows)
    return size_min(H, landmarks // columns), columns


def pooling_matrix(grid, landmarks: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[rows * columns, H * W] block-mean weights of `landmark_grid(landmarks, grid)`: patch (r, c)
    belongs to block (floor(r * rows / H), floor(c * columns / W)), the blocks of
    `segment_means`, so `pooling_matrix @ patches` are the block means exactly, in one matmul."""
    H, W = grid
    rows, columns = landmark_grid(landmarks, grid)
    r = index_div(torch.arange(H, device=device) * rows, H)
    c = index_div(torch.arange(W, device=device) * columns, W)
    block = (r[:, None] * columns + c[None, :]).flatten()
    member = (torch.arange(rows * columns, device=device)[:, None] == block[None, :]).to(dtype)
    return member / member.sum(-1, keepdim=True)


def block_means(patches: torch.Tensor, grid, landmarks: int) -> torch.Tensor:
    """Means of patch tokens [..., H * W, d] over the blocks of `landmark_grid(landmarks, grid)`:
    [..., rows * columns, d]."""
    return torch.matmul(pooling_matrix(grid, landmarks, patches.dtype, patches.device), patches)


def iterative_pinv(a: torch.Tensor, iterations: int, ridge: float | None = None, stochastic: bool = False) -> torch.Tensor:
    """Ridge-regularised pseudo-inverse (A^T A + mu^2 I)^-1 A^T of matrices a [..., m, m].

    The paper's third-order iteration Z <- Z (13 I - BZ (15 I - BZ (7 I - BZ))) / 4
    (Razavi et al. 2014) applied to B = [A; mu I] with mu = ridge * sqrt(||A||_1 ||A||_inf),
    in the left form Z <- p(ZB) Z, started from Z0 = B^T / (||B||_1 ||B||_inf) per sample and
    per head (never a max over the batch, which would couple samples). B has full column rank
    and condition number <= ~1/ridge, so every singular direction's gain rises monotonically to
    its fixed point s / (s^2 + mu^2) and rounding stays bounded in fp32 for any iteration count;
    singular values s of A well above mu are inverted unchanged, smaller ones are damped instead
    of amplified. `ridge` defaults to PINV_RIDGE_SCALE / m (NystromAttention says why).
    `stochastic=True` declares a non-negative a whose rows sum to 1 (a softmax kernel), so
    ||A||_inf = 1 is not computed. Each iteration is four batched ops (one matmul, three
    baddbmm, no identity matrix: p(X) Z = (13 Z - X (15 I - X (7 I - X)) Z) / 4 as
    s = 7 X - X X, r = 15 X - X s, Z <- 13/4 Z - r Z / 4), the whole inverse
    4 * iterations + 15 ops (stochastic) or + 20.

    X is recomputed from Z and B every iteration on purpose. Forms that hold fewer [m, m]
    tensors were measured on the captured trained q/k/v (tests/data; fp32 against float64, four
    blocks at 257 and 1,025 tokens) and rejected: carrying X by its own recurrence
    (Z' B = p(X) X; four tensors, not seven) loses the iteration's self-correction, errors up to
    1.0e-5 against 5.5e-7; iterating on the normal matrix B^T B squares the condition number, up
    to 3.5e-5; keeping Z as [Z_a, mu Z_r] beside A, so B is never written (six tensors), is as
    accurate but needs two more view ops per iteration.
    """
    m = a.shape[-1]
    ridge = PINV_RIDGE_SCALE / m if ridge is None else ridge
    shape = a.shape
    a = a.reshape(-1, m, m)  # [batch, m, m]: baddbmm's layout
    eye = torch.eye(m, device=a.device, dtype=a.dtype)
    if stochastic:
        col_norm = a.sum(dim=-2, keepdim=True).amax(dim=-1, keepdim=True)
        mu = torch.sqrt(col_norm) * ridge
        b = torch.cat([a, mu * eye], dim=-2)
        z = b.transpose(-1, -2) / ((col_norm + mu) * mu.clamp_min(1.0))
    else:
        col_norm = a.abs().sum(dim=-2, keepdim=True).amax(dim=-1, keepdim=True)
        row_norm = a.abs().sum(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)
        mu = ridge * torch.sqrt(col_norm * row_norm)
        b = torch.cat([a, mu * eye], dim=-2)
        z = b.transpose(-1, -2) / ((col_norm + mu) * torch.maximum(row_norm, mu))
    del a  # b holds a copy: the caller's kernel is not kept through the iterations
    for _ in range(iterations):
        # baddbmm(c, x, y, beta, alpha) = beta c + alpha x @ y; X = ZB
        zb = torch.matmul(z, b)
        s = torch.baddbmm(zb, zb, zb, beta=7, alpha=-1)
        r = torch.baddbmm(zb, zb, s, beta=15, alpha=-1)
        del zb, s
        z = torch.baddbmm(z, r, z, beta=3.25, alpha=-0.25)
        del r  # at most seven [m, m] tensors held at once (b and z count two each)
    return z[..., :m].reshape(shape)


class NystromAttention(TimmAttention):
    """Landmark (Nystrom) attention: `landmarks` pooled patch landmarks plus the prefix tokens."""

    display_rank = 3
    computes_in_fp32 = True
    tiny_settings = MappingProxyType({"landmarks": 8, "conv_kernel": 3})

    @classmethod
    def error_budgets(cls, grid: int) -> list[dict]:
        """16-128 landmarks without the value convolution (the approximation alone), and 16 and 64
        landmarks with 64 pseudo-inverse iterations (the default is 8)."""
        return [*({"landmarks": m, "conv_kernel": 0} for m in (16, 32, 64, 128)),
                *({"landmarks": m, "pinv_iterations": 64, "conv_kernel": 0} for m in (16, 64))]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        landmarks: int = 64,
        pinv_iterations: int = PINV_ITERATIONS,
        conv_kernel: int = 33,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if landmarks < 1:
            raise ValueError(f"landmarks must be >= 1, got {landmarks}")
        if pinv_iterations < 0:
            raise ValueError(f"pinv_iterations must be >= 0, got {pinv_iterations}")
        if conv_kernel and conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (or 0 for none), got {conv_kernel}")
        self.landmarks = landmarks
        self.pinv_iterations = pinv_iterations
        self.res_conv = None
        if conv_kernel:
            self.res_conv = nn.Conv2d(
                num_heads, num_heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0),
                groups=num_heads, bias=False, device=kwargs.get("device"), dtype=kwargs.get("dtype"),
            )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        if self.res_conv is not None and not self.res_conv.weight.is_meta:
            nn.init.zeros_(self.res_conv.weight)

    def landmarks_used(self, grid) -> int:
        """Patch landmarks pooled on patch grid `grid` (H, W): `landmarks` unless the grid has fewer
        patches (then every patch is one and the output is exact) or `landmarks` has no
        rows x columns factorisation on it (e.g. 65 -> 8x8 = 64); prefix tokens come on top."""
        rows, columns = landmark_grid(self.landmarks, grid)
        return rows * columns

    def _report(self, grid) -> None:
        """Warn once per (landmarks, grid) when fewer landmarks than asked are pooled while the
        grid has more patches than that (eager only: nothing is logged inside a traced graph)."""
        if torch.compiler.is_compiling() or not all(isinstance(x, int) for x in grid):
            return
        used = self.landmarks_used(grid)
        if used < self.landmarks and used < grid[0] * grid[1]:
            _warn_fewer(self.landmarks, used, tuple(grid))

    def _landmarks(self, x: torch.Tensor, grid, prefix) -> torch.Tensor:
        """[..., prefix + m', d]: the prefix tokens, then the patch block means (segment means of
        the sequence when the patch grid is unknown)."""
        if grid is None:
            return segment_means(x, size_min(self.landmarks, x.shape[-2]))
        return torch.cat([x[..., :prefix, :], block_means(x[..., prefix:, :], grid, self.landmarks)], dim=-2)

    def _nystrom(self, q, k, v, grid, prefix, dropout: float, eager: bool) -> torch.Tensor:
        """softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V for q, k, v [B, heads, N, d]."""
        if grid is None:
            q_land, k_land = self._landmarks(q, None, 0), self._landmarks(k, None, 0)
        elif eager and not torch.compiler.is_compiling():
            # a constant of the grid, built once: prefix rows of the identity, then block means
            pool = _cached_pooling(tuple(grid), self.landmarks, prefix, q.dtype, str(q.device))
            q_land, k_land = torch.matmul(pool, q), torch.matmul(pool, k)
        else:
            pool = pooling_matrix(grid, self.landmarks, q.dtype, q.device)
            q_land = torch.cat([q[..., :prefix, :], torch.matmul(pool, q[..., prefix:, :])], dim=-2)
            k_land = torch.cat([k[..., :prefix, :], torch.matmul(pool, k[..., prefix:, :])], dim=-2)
        # softmax(Q~ K^T) V and softmax(Q K~^T) W: fused attention kernels in the compute dtype
        mixed = F.scaled_dot_product_attention(q_land, k, v, dropout_p=dropout)
        with fp32_region(q):
            # the [m, m] landmark kernel and its inverse stay fp32: condition numbers 1e7-1e19
            acc = _accumulation_dtype(q)
            # rebuilt in backward from the landmarks: its iterations would keep ~5 [m, 2m] fp32 tensors each
            inverse = recompute_in_backward(self._landmark_inverse, q_land, k_land, keep_attention=False)
            weights = torch.matmul(inverse, mixed.to(acc)).to(v.dtype)
        return F.scaled_dot_product_attention(q, k_land, weights)

    def _landmark_inverse(self, q_land: torch.Tensor, k_land: torch.Tensor) -> torch.Tensor:
        """pinv(softmax(Q~ K~^T / sqrt(d))) [B, heads, m, m] in fp32 (fp64 for fp64 landmarks), from
        the landmarks [B, heads, m, d]. The kernel is handed straight to `iterative_pinv`, which
        drops it once its iteration is set up, so it is not held through the iterations."""
        acc = _accumulation_dtype(q_land)
        return iterative_pinv(torch.softmax(torch.matmul(q_land.to(acc), k_land.to(acc).transpose(-1, -2)) * self.scale, dim=-1),
                              iterations=self.pinv_iterations, stochastic=True)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        """q, k, v [B, heads, N, head_dim] -> [B, heads, N, head_dim] (see the module docstring)."""
        n = q.shape[-2]
        prefix = 0 if grid is None else self.patch_grid(n, grid)[2]
        if grid is not None:
            self._report(grid)
        dropout = self.attn_drop.p if self.training else 0.0
        eager = isinstance(n, int) and (grid is None or all(isinstance(x, int) for x in grid))
        # With every token a landmark the limit is exact attention (computed on the first
        # `landmarks + prefix` tokens, i.e. all of them). Eager knows the sizes and takes one path;
        # a traced graph with symbolic sizes computes both and selects with a tensor test, so
        # exported graphs agree with eager at every size.
        if eager and n <= self.landmarks + prefix:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        else:
            out = self._nystrom(q, k, v, grid, prefix, dropout, eager)
        if not eager:
            head = size_min(n, self.landmarks + prefix)
            exact = F.scaled_dot_product_attention(q[..., :head, :], k[..., :head, :], v[..., :head, :], dropout_p=dropout)
            covered = torch.arange(n, device=q.device)[-1] < self.landmarks + prefix
            out = torch.where(covered, F.pad(exact, (0, 0, 0, n - head)), out)
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        return out


def _accumulation_dtype(x) -> torch.dtype:
    """float32, or float64 for float64 inputs (FX proxies, whose dtype is unknown while tracing,
    get float32)."""
    return torch.float64 if isinstance(x, torch.Tensor) and x.dtype == torch.float64 else torch.float32


@functools.lru_cache(maxsize=32)
def _cached_pooling(grid: tuple, landmarks: int, prefix: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """[prefix + m', prefix + H * W]: identity rows for the prefix tokens, then the block means."""
    with torch.inference_mode(False):  # ordinary tensors: a later training step may save them
        pool = pooling_matrix(grid, landmarks, dtype, torch.device(device))
        return torch.block_diag(torch.eye(prefix, dtype=dtype, device=device), pool)


@functools.lru_cache(maxsize=64)
def _warn_fewer(requested: int, used: int, grid: tuple) -> None:
    log.warning("nystrom: %d landmarks requested, %d used on the %dx%d patch grid (no rows x columns "
                "factorisation of %d fits it); landmarks_used(grid) gives the count", requested, used,
                grid[0], grid[1], requested)
