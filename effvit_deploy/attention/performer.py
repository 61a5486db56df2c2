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
- Numerical stability: features are computed in float32 even under autocast, and every shift
  below is a constant that cancels between numerator and normaliser, so the maths is the
  paper's. Keys: the per-(sample, head) maximum of w^T k - |k|^2 / 2 is subtracted, so the
  largest key feature is exactly 1. Queries: exp(-|q|^2 / 2) is a per-query constant that
  cancels, so it is left out (in fp32 it underflows to zero for |q| above ~34 at head dim 32,
  which returned all-zero rows). With S_f feature f's sum over keys, the output is computed as
  sum_f a_f (kv_f / S_f) / sum_f a_f with a_f = exp(w_f^T q + log S_f - max_g(w_g^T q + log S_g)),
  the same ratio as the paper's, but the largest a_f is exactly 1, so the normaliser is >= 1
  for every query at any norm: no row is zero, infinite or clamped, and rows of ordinary norm
  are unchanged up to rounding (<= 1e-6 relative).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import TimmAttention, fp32_region


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """[num_features, dim] blocks of orthogonal rows, each row scaled to a chi(dim) norm (paper §4)."""
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device="cpu")
        q, _ = torch.linalg.qr(gaussian)
        blocks.append(q.t())
    rows = torch.cat(blocks)[:num_features]
    norms = torch.randn(num_features, dim, generator=generator, device="cpu").norm(dim=1, keepdim=True)
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
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = num_features
        self.redraw_interval = redraw_interval
        self.feature_seed = feature_seed
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.register_buffer("features", torch.empty(num_features, self.head_dim, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """(Re)draw the features of step 0: timm's `init_weights` calls this, so a model built on
        the meta device and materialised with `to_empty` gets real features, not garbage."""
        if not self.features.is_meta:
            self.redraw(0)

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.feature_seed * 1_000_003 + step)

    @torch.no_grad()
    def redraw(self, step: int) -> None:
        """Draw fresh features, deterministically from (feature_seed, step)."""
        fresh = orthogonal_gaussian(self.num_features, self.head_dim, self._generator(step))
        self.features.copy_(fresh)

    def _projection(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x * self.head_dim**-0.25, self.features.to(x.dtype).t())

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        out_dtype = v.dtype
        with fp32_region(q):
            q, k, v = q.float(), k.float(), v.float()
            key_logits = self._projection(k) - (k * k).sum(-1, keepdim=True) * (self.head_dim**-0.5 / 2)
            phi_k = torch.exp(key_logits - key_logits.amax(dim=(-1, -2), keepdim=True).detach())
            key_mass = phi_k.sum(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
            values = torch.matmul(phi_k.transpose(-1, -2), v) / key_mass.transpose(-1, -2)
            query_logits = self._projection(q) + key_mass.log()
            phi_q = torch.exp(query_logits - query_logits.amax(dim=-1, keepdim=True).detach())
            out = torch.matmul(phi_q, values) / phi_q.sum(dim=-1, keepdim=True)
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
