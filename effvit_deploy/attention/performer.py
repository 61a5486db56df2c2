"""Performer: FAVOR+ attention with positive orthogonal random features
(Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794).

softmax(q k^T / sqrt(d)) is approximated by phi(q) phi(k)^T with the positive feature map
phi(x) = exp(w_i^T x - |x|^2 / 2) / sqrt(m), w_i orthogonal Gaussian rows, x scaled by d^-1/4,
so attention costs O(N * m * d). Reference code: google-research/performer (fast_attention),
lucidrains/performer-pytorch.

- Features are drawn once at construction and stored as a buffer (saved with the weights, fixed
  in eval and in the exported graph: no QR inside the graph). `redraw_features(model, step)`
  redraws them every `redraw_interval` optimizer steps during training from a seed derived from
  the step, so every DDP rank and a resumed run draw the same features. Attention dropout does
  not apply: there is no attention matrix to drop from.
- Numerical stability: the per-query maximum and the per-(sample, head) key maximum are
  subtracted inside the exponent (they cancel in the normalisation), and the feature map and
  the two contractions run in float32 under autocast, so fp16/bf16 give no overflow.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import TimmAttention


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """[num_features, dim] blocks of orthogonal rows, each row scaled to a chi(dim) norm (paper §4)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator)
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.t())
    rows = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator).norm(dim=1, keepdim=True)
    return rows * norms


class PerformerAttention(TimmAttention):
    """Linear-time softmax-kernel attention with `num_features` positive random features."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        num_features: int = 256,
        redraw_interval: int = 1000,
        feature_seed: int = 0,
        eps: float = 1e-20,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.redraw_interval = redraw_interval
        self.feature_seed = feature_seed
        self.eps = eps
        features = orthogonal_gaussian(num_features, self.head_dim, self._generator(0))
        self.register_buffer("features", features.to(device=kwargs.get("device")))

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.feature_seed * 1_000_003 + step)

    @torch.no_grad()
    def redraw(self, step: int) -> None:
        """Draw fresh features, deterministically from (feature_seed, step)."""
        fresh = orthogonal_gaussian(self.num_features, self.head_dim, self._generator(step))
        self.features.copy_(fresh)

    def _feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        x = x * self.head_dim**-0.25
        proj = torch.matmul(x, self.features.to(x.dtype).t())
        diag = (x * x).sum(-1, keepdim=True) / 2
        if is_query:
            shift = proj.amax(dim=-1, keepdim=True)
        else:
            shift = proj.amax(dim=(-1, -2), keepdim=True)
        return torch.exp(proj - diag - shift.detach()) / math.sqrt(self.num_features)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out_dtype = v.dtype
        with torch.autocast(device_type=q.device.type, enabled=False):
            q, k, v = q.float(), k.float(), v.float()
            phi_q = self._feature_map(q, is_query=True)
            phi_k = self._feature_map(k, is_query=False)
            kv = torch.matmul(phi_k.transpose(-1, -2), v)
            normaliser = torch.matmul(phi_q, phi_k.sum(dim=-2, keepdim=True).transpose(-1, -2))
            out = torch.matmul(phi_q, kv) / normaliser.clamp_min(self.eps)
        return out.to(out_dtype)


def redraw_features(model: nn.Module, step: int) -> int:
    """Redraw every Performer layer whose interval divides `step` (step > 0); returns how many."""
    redrawn = 0
    for module in model.modules():
        if isinstance(module, PerformerAttention) and module.redraw_interval > 0:
            if step > 0 and step % module.redraw_interval == 0:
                module.redraw(step)
                redrawn += 1
    return redrawn
