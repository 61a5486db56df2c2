"""Nystromformer: a Nystrom-based approximation of self-attention
(Xiong et al. 2021, arXiv:2102.03902; official code mlpen/Nystromformer).

With m landmarks (segment means of queries and keys), softmax(Q K^T) V is approximated as

    softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V,

O(N * m) in time and memory. The pseudo-inverse is the paper's iterative Moore-Penrose
approximation (matmuls only, so it exports to ONNX), 6 iterations by default, started from
Z0 = A^T / (||A||_1 ||A||_inf) computed per sample and per head (never a max over the batch,
which would couple samples). Landmarks are means over `landmarks` contiguous segments whose
sizes differ by at most one, so any N works without padding; with landmarks >= N every
segment is one token and the formula is exact attention up to the pseudo-inverse.
An optional depthwise convolution over the sequence on V (the official code's residual,
kernel 33) is zero-initialised so a pretrained ViT starts unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import TimmAttention


def segment_means(x: torch.Tensor, segments) -> torch.Tensor:
    """Means of x [..., N, d] over `segments` contiguous, near-equal segments of N -> [..., m, d]."""
    n = x.shape[-2]
    # truncating division: both operands are non-negative, and floor division would export a
    # sign test (a boolean Equal) that TensorRT cannot parse
    segment_of_token = torch.div(torch.arange(n, device=x.device) * segments, n, rounding_mode="trunc")
    one_hot = segment_of_token.unsqueeze(0) == torch.arange(segments, device=x.device).unsqueeze(1)
    weights = one_hot.to(x.dtype)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return torch.matmul(weights, x)


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of softmax matrices [..., m, m] by the paper's iteration."""
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    col_norm = a.abs().sum(dim=-2).amax(dim=-1, keepdim=True).unsqueeze(-1)
    row_norm = a.abs().sum(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)
    z = a.transpose(-1, -2) / (col_norm * row_norm)
    for _ in range(iterations):
        az = torch.matmul(a, z)
        z = 0.25 * torch.matmul(z, 13 * eye - torch.matmul(az, 15 * eye - torch.matmul(az, 7 * eye - az)))
    return z


class NystromAttention(TimmAttention):
    """Landmark (Nystrom) attention with `landmarks` segment means."""

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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = v.dtype
        segments = torch.sym_min(self.landmarks, q.shape[-2])
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v32 = q.float() * self.scale, k.float(), v.float()
            q_land, k_land = segment_means(q, segments), segment_means(k, segments)
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
