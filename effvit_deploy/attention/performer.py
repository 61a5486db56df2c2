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
- GPU form (0.4): the estimator is computed as two softmax attentions through
  `F.scaled_dot_product_attention` (fused flash/memory-efficient kernels on CUDA, the flash
  kernel on CPU), so the [N, num_features] feature maps phi(q), phi(k) are never written.
  Stage 1: the m features attend over the keys with scores l_nf = w'_f^T k_n - |k_n|^2 / (2
  sqrt(d)) (w' = w d^-1/4), folded into an augmented dimension
  [k, -|k|^2/(2 sqrt d), 1] . [w', 1, -c_f], which yields kv_f / S_f; the shift c_f = max_n l_nf
  and an extra zero key with value e_d yield S_f through that key's weight
  o_f = e^c_f / (S_f + e^c_f) in [1 / (N + 1), 1 / 2]: log S_f = c_f + log((1 - o_f) / o_f).
  Stage 2: every query attends over the m features
  with scores w'_f^T q + log S_f - max_g log S_g (the paper's exp(-|q|^2 / 2) and every
  constant shift cancel in this softmax). Widths are padded to a multiple of 8 (flash-eligible).
  Each augmented [N, width] tensor is written once: the keys [k, -|k|^2/(2 sqrt d), 1, 0...] and
  values [v, 0...] with the extra row appended by one pad, their few extra entries then copied
  in (`fill_columns`), the queries [q, 1, 1...] by one pad.
  The result is the paper's ratio sum_f a_f (kv_f / S_f) / sum_f a_f exactly (rows of ordinary
  norm match a float64 transcription of the paper to <= 1e-6 in fp32), and every row is a
  convex combination of values at any query or key norm: no zero, infinite or clamped row.
- c_f is only a stabiliser (log S_f does not depend on it in exact arithmetic), so it is
  computed without autograd: the gradient is the paper estimator's (tested against autograd
  through the float64 transcription) and backward keeps no [N, num_features] tensor.
- Training: autograd keeps q, k, v and the two kernels' outputs; the padded copies are rebuilt
  in backward (`recompute_in_backward`, a selective `torch.utils.checkpoint`; gradients
  unchanged). Peak memory of a bf16 forward + backward of ViT-S/16 at 1024 px (4,097 tokens,
  batch 1) is 1.06x exact attention's at depth 12, 1.04x at depth 1 (0.4.0: 1.45x, 1.31x); the
  rebuild costs one more l product and the pads per block in backward. Inference peak equals
  exact's at 224 px, batch 8 (197 tokens; the first attention's inputs are freed before the
  second) and at 512, 1024 and 2048 px (16,385 tokens): l is as large as the MLP's hidden
  activation and is freed before it, so chunking it over tokens would not lower the peak.
  Below about num_features tokens the [B, heads, m, width] feature-side tensors outgrow the
  token ones (at those sizes FAVOR+ also costs more FLOPs than exact attention). With the
  default 256 features, batch 8 (benchmarks/results/inference_peak_sweep.md): 1.10x exact's
  peak at 160 px (101 tokens), 1.34x at 128 px, 1.61x at 96 px, 2.05x at 64 px (17 tokens);
  equal from 192 px. Chunking the batch would lower it, at about 50 more kernel launches per
  block for each chunk (benchmarks/small_size_chunking.py;
  benchmarks/results/small_size_chunking.md): 2 chunks bring 128 and 160 px to 1.00x at 131
  aten ops per block instead of 77, 3 chunks 64 and 96 px at 181. At these sizes a GPU forward
  is launch-bound and the memory saved is a few MiB (at most 2.4 MiB at batch 8), so it is not
  done.
- Precision: everything runs in the input's dtype (bf16/fp16 under autocast; the kernels
  accumulate in fp32) except the [B, heads, m, 1] normaliser log S_f and 1 - o_f, which are
  fp32 (log S_f spans hundreds for large-norm keys); kv_f / S_f divides by 1 - o_f (in
  [1/2, 1)) rounded to the compute dtype. The only [N, num_features] tensor written is the key
  score l (compute dtype), read once for c_f.
  Measured on a trained ViT's captured q/k/v (tests/data): the error against exact attention
  in float64 under bf16 and fp16 autocast is within 1% of the fp32 path's.
- Cost: one bf16-autocast forward of ViT-S/16 at 512 px dispatches 78.5 aten ops per block
  (0.4.0: 80.5; 0.3.0: 63.5, fewer ops but every feature map in fp32) and writes 1.42x the
  attention-free bound's bytes (3dad674, before issue 19: 4.17x; benchmarks/results/attention_proxies.md).
  The largest temporary is l, [B, heads, N, m] in the compute dtype: for ViT-S with m = 256
  exactly the size of the MLP's hidden activation (heads * m = 4 * dim), which exact
  attention's blocks hold too.
- Limits: in fp16, keys of norm above ~600 overflow |k|^2 / (2 sqrt d) (fp16 max 65,504).
"""
from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention, recompute_in_backward


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


def fill_columns(x: torch.Tensor, start: int, columns: torch.Tensor) -> torch.Tensor:
    """x [..., n, width] with columns [..., n, c] copied into x[..., start : start + c], in place;
    returns x. Registered with `torch.fx.wrap`, so an FX graph records one call whose output is
    used (dead-code elimination would drop a bare in-place copy)."""
    x[..., start : start + columns.shape[-1]] = columns
    return x


torch.fx.wrap("fill_columns")


class PerformerAttention(TimmAttention):
    """Linear-time softmax-kernel attention with `num_features` positive random features."""

    display_rank = 2
    computes_in_fp32 = True
    tiny_settings = MappingProxyType({"num_features": 32})

    @classmethod
    def error_budgets(cls, grid: int) -> list[dict]:
        """64, 256 (the paper's) and 1,024 random features."""
        return [{"num_features": m} for m in (64, 256, 1024)]

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

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        """FAVOR+ as two softmax attentions: q, k, v [B, heads, N, head_dim] -> [B, heads, N, head_dim].

        The estimator sum_f a_f (kv_f / S_f) / sum_f a_f is evaluated without ever writing the
        [N, num_features] feature maps: (1) each feature f "attends" over the keys with scores
        l_nf = w_f^T k'_n - |k'_n|^2 / 2 (k' = k d^-1/4), which gives kv_f / S_f; with those scores
        shifted by -c_f (c_f = max_n l_nf), a zero dummy key with value e_d gives
        log S_f = c_f + log((1 - o_f) / o_f) from its weight o_f in [1 / (N + 1), 1 / 2]; (2) each query attends over the features with scores
        w_f^T q' + log S_f (the paper's exp(-|q'|^2 / 2) cancels). Both are
        `F.scaled_dot_product_attention` calls (fused kernels on GPU and CPU), the scores folded
        into the feature dimension so no mask is needed (flash-eligible: widths padded to 8).
        """
        return recompute_in_backward(self._favor, q, k, v)

    def _favor(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`attend`'s two attentions; in training the padded copies are rebuilt in backward."""
        B, h, N, d = q.shape
        m = self.num_features
        dtype = q.dtype
        width = (d + 2 + 7) // 8 * 8
        acc = torch.promote_types(dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        # w' = w d^-1/4 carries the paper's input scaling, so q and k are never rescaled
        w = (self.features * self.head_dim**-0.25).to(dtype)
        half_norm = torch.linalg.vector_norm(k, dim=-1, keepdim=True, dtype=acc)
        half_norm = (half_norm * half_norm * (-0.5 * self.head_dim**-0.5)).to(dtype)  # [B, h, N, 1]
        # keys [k, -|k|^2/(2 sqrt d), 1, 0...] and values [v, 0...], then a dummy key of zeros
        # with value e_d: each written once (a pad), then the few extra entries copied in
        extra = F.pad(F.pad(half_norm, (0, 1), value=1.0), (0, 0, 0, 1))  # [B, h, N + 1, 2]
        keys = fill_columns(F.pad(k, (0, width - d, 0, 1)), d, extra)
        values = fill_columns(F.pad(v, (0, width - d, 0, 1)), d, 1 - extra[..., 1:])
        feats = F.pad(F.pad(w, (0, 1), value=1.0), (0, width - d - 1))  # [w', 1, 0...]
        zeros = feats[:, d + 1 :]
        # c_f: each feature's largest key score (the dummy's row of the product left out). The
        # features' scores are shifted by -c_f (the keys' ones column), so the dummy key (score 0)
        # has weight o_f in [1 / (N + 1), 1 / 2]. Only a stabiliser: log S_f below does not depend
        # on c_f, so it is computed without autograd, which then saves neither the [B, h, N, m]
        # scores nor the max's indices; the gradient is unchanged.
        with torch.no_grad():
            top = torch.matmul(keys, feats.t())[..., :-1, :].amax(dim=-2).unsqueeze(-1)  # [B, h, m, 1]
        feat_q = torch.cat([feats[:, : d + 1].expand(B, h, m, d + 1), -top, zeros[:, 1:].expand(B, h, m, -1)], dim=-1)
        mixed = F.scaled_dot_product_attention(feat_q, keys, values, scale=1.0)  # [B, h, m, width]
        del feat_q, keys, values  # not held through stage 2 (inference peak memory)
        # fp32 for the [B, h, m, 1] normaliser: log S_f spans hundreds for large-norm keys
        o = mixed[..., d : d + 1].to(acc)
        rest = 1 - o
        log_mass = top.to(acc) + torch.log(rest / o)
        kv = mixed / rest.to(dtype)  # kv_f / S_f; the columns past d are sliced off the output
        del mixed
        bias = (log_mass - log_mass.amax(dim=-2, keepdim=True)).to(dtype)
        feat_k = torch.cat([w.expand(B, h, m, d), bias, zeros.expand(B, h, m, -1)], dim=-1)
        # the query's padding columns are ones: they meet the bias column, then zeros
        queries = F.pad(q, (0, width - d), value=1.0)
        out = F.scaled_dot_product_attention(queries, feat_k, kv, scale=1.0)
        return out[..., :d]


def redraw_features(model: nn.Module, step: int) -> int:
    """Redraw every Performer layer whose interval divides `step` (step > 0); returns how many."""
    redrawn = 0
    for module in model.modules():
        if isinstance(module, PerformerAttention) and module.redraw_interval > 0:
            if step > 0 and step % module.redraw_interval == 0:
                module.redraw(step)
                redrawn += 1
    return redrawn
