"""Nystromformer: a Nystrom-based approximation of self-attention
(Xiong et al. 2021, arXiv:2102.03902; official code mlpen/Nystromformer).

With m landmarks Q~, K~, softmax(Q K^T) V is approximated as

    softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V,

O(N * m) in time and memory. Choices beyond the paper, each measured on the query/key/value
activations of a trained exact ViT (benchmarks/results/approximation_error.md):

- Landmarks. Prefix (class/register) tokens are landmarks of their own and the remaining
  `landmarks - prefix` landmarks are means over contiguous segments of the patch tokens whose
  sizes differ by at most one (as the official code, never padding at the front). Averaging
  the class token into the first patch segment, as a plain segment mean does, mixes the one
  token every query attends to with unrelated patches. Measured against that (same trained
  digits model and images, default 6 iterations) the error falls at every budget and length
  but one (128 landmarks, 1,025 tokens: 0.041 -> 0.046), e.g. 0.200 -> 0.109 at 64 landmarks
  and 1,025 tokens; on the cluttered-digits model it falls at 64-128 landmarks and is mixed
  below. It still does not fall monotonically from 16 to 64 landmarks at 1k-4k tokens on
  either model. Segment sums are a gather
  of each segment's tokens (about N * d work), not a dense [m, N] pooling matmul. With
  `landmarks >= N` every token is a landmark and, with a converged pseudo-inverse
  (`pinv_iterations=16`), the formula is exact attention up to the ridge (relative error ~1e-4
  on a trained model's ill-conditioned kernels, ~5e-5 on well-conditioned inputs).
- Pseudo-inverse. The landmark kernel of a trained model is ill-conditioned (condition number
  1e7-1e11): the paper's iteration, run in fp32, amplifies rounding along its tiny singular
  directions and diverges past ~20 iterations (NaN at 40), while fewer iterations leave error.
  `iterative_pinv` runs the same iteration on the ridge-augmented matrix [A; mu I], whose
  pseudo-inverse's first block is the Tikhonov-regularised inverse (A^T A + mu^2 I)^-1 A^T and
  whose condition number is at most ~1/ridge: it converges for any iteration count, in fp32
  and under autocast (the kernels run in fp32), with matmuls only, so it exports to ONNX and
  TensorRT. Iterating on A^T A + mu^2 I instead would square the condition number.
- Defaults: ridge = 3e-4, where the iteration reaches its fixed point by 16 iterations (ridge
  1e-4 is closer at the exact limit but its larger condition number let ONNX Runtime and
  PyTorch drift apart by > 1e-4; 1e-3 damps kernels of moderate condition). The default
  iteration count stays the paper's 6, from two trained exact models
  (benchmarks/results/approximation_error*.md): on the near-uniform attention of the digits
  model more iterations help (64 landmarks at 1,025 tokens: relative error 0.109 at 6, 0.048
  converged at 16; exact limit at 197 tokens 1.8e-2 -> 1e-4), but on the more peaked attention
  of the cluttered-digits model a converged pseudo-inverse makes the approximation worse
  (16 landmarks at 1,025 tokens: 0.52 at 6, 2.33 at 16; 64 at 4,097: 0.57 and 5.85). Raise `pinv_iterations` (16
  converges) for near-uniform attention or many landmarks; any count is stable.

An optional depthwise convolution over the sequence on V (the official code's residual,
kernel 33) is zero-initialised so a pretrained ViT starts unchanged.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention

PINV_RIDGE = 3e-4


def segment_means(x: torch.Tensor, segments) -> torch.Tensor:
    """Means of x [..., n, d] over `segments` <= n contiguous segments of near-equal size.

    Token i belongs to segment floor(i * segments / n), so segment j spans tokens
    ceil(j * n / segments) .. ceil((j + 1) * n / segments) - 1. Each segment's tokens are
    gathered into a [segments, longest] grid (short segments point at an appended zero row)
    and summed: exact for any n, and the dynamic n survives export.
    """
    n = x.shape[-2]
    longest = (n + segments - 1) // segments
    # truncating division of non-negative integers: floor division would export a sign test
    # (a boolean Equal) that TensorRT cannot parse
    bounds = torch.div(
        torch.arange(segments + 1, device=x.device) * n + (segments - 1), segments, rounding_mode="trunc"
    )
    index = bounds[:-1, None] + torch.arange(longest, device=x.device)[None, :]
    index = torch.where(index < bounds[1:, None], index, n)
    padded = F.pad(x, (0, 0, 0, 1))
    sums = padded.index_select(-2, index.flatten()).unflatten(-2, (segments, longest)).sum(-2)
    return sums / (bounds[1:] - bounds[:-1]).unsqueeze(-1).to(x.dtype)


def iterative_pinv(a: torch.Tensor, iterations: int, ridge: float = PINV_RIDGE) -> torch.Tensor:
    """Ridge-regularised pseudo-inverse (A^T A + mu^2 I)^-1 A^T of matrices a [..., m, m].

    The paper's third-order iteration Z <- Z (13 I - BZ (15 I - BZ (7 I - BZ))) / 4
    (Razavi et al. 2014) applied to B = [A; mu I] with mu = ridge * sqrt(||A||_1 ||A||_inf),
    in the left form Z <- p(ZB) Z, started from Z0 = B^T / (||B||_1 ||B||_inf) per sample and
    per head (never a max over the batch, which would couple samples). B has full column rank
    and condition number <= ~1/ridge, so every singular direction converges monotonically in
    exact arithmetic and rounding stays bounded in fp32 for any iteration count; singular values
    of A well above mu are inverted unchanged, smaller ones are damped instead of amplified.
    """
    m = a.shape[-1]
    eye = torch.eye(m, device=a.device, dtype=a.dtype)
    col_norm = a.abs().sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)
    row_norm = a.abs().sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
    mu = ridge * torch.sqrt(col_norm * row_norm)
    b = torch.cat([a, mu * eye], dim=-2)
    z = b.transpose(-1, -2) / ((col_norm + mu) * torch.maximum(row_norm, mu))
    for _ in range(iterations):
        zb = torch.matmul(z, b)
        z = 0.25 * torch.matmul(13 * eye - torch.matmul(zb, 15 * eye - torch.matmul(zb, 7 * eye - zb)), z)
    return z[..., :m]


class NystromAttention(TimmAttention):
    """Landmark (Nystrom) attention with `landmarks` landmarks, prefix tokens among them."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        landmarks: int = 64,
        pinv_iterations: int = 6,
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

    def _landmarks(self, x: torch.Tensor, prefix) -> torch.Tensor:
        """[..., m, d]: the prefix tokens, then segment means of the patch tokens."""
        patches = x.shape[-2] - prefix
        segments = torch.sym_min(self.landmarks - prefix, patches)
        return torch.cat([x[..., :prefix, :], segment_means(x[..., prefix:, :], segments)], dim=-2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = v.dtype
        prefix = 0 if self.grid is None else self.patch_grid(q.shape[-2])[2]
        if self.landmarks <= prefix:
            raise ValueError(
                f"landmarks={self.landmarks} leaves none for the patch tokens after the {prefix} prefix "
                f"(class/register) tokens, which are landmarks of their own: use landmarks > {prefix}"
            )
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v32 = q.float() * self.scale, k.float(), v.float()
            q_land, k_land = self._landmarks(q, prefix), self._landmarks(k, prefix)
            kernel_1 = torch.softmax(torch.matmul(q, k_land.transpose(-1, -2)), dim=-1)
            kernel_2 = torch.softmax(torch.matmul(q_land, k_land.transpose(-1, -2)), dim=-1)
            kernel_3 = torch.softmax(torch.matmul(q_land, k.transpose(-1, -2)), dim=-1)
            kernel_3 = self.attn_drop(kernel_3)
            out = torch.matmul(
                torch.matmul(kernel_1, iterative_pinv(kernel_2, self.pinv_iterations)),
                torch.matmul(kernel_3, v32),
            )
        out = out.to(out_dtype)
        if self.res_conv is not None:
            out = out + self.res_conv(v)
        return out
