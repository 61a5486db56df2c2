"""Linformer: self-attention with linear complexity (Wang et al. 2020, arXiv:2006.04768).

Keys and values of the patch tokens are projected along the sequence, K' = E K and V' = F V,
from the H * W patch tokens down to `proj_len` rows, so attention costs O(N * proj_len).

Choices beyond the paper, so the module is a ViT drop-in:
- Prefix (class/register) tokens keep their own keys and values, unprojected, so every query
  sees the class token exactly.
- E is stored over the *training* patch grid as [heads, proj_len, Ht, Wt]. At another input
  size it is resampled bilinearly to the new grid (as timm resamples position embeddings) and
  rescaled by (Ht * Wt) / (H * W) so each projected row keeps the mass it had: a model trained
  at 224 runs at 384, 512 or a non-square size.
- E starts as 2-D area pooling of the grid to a ph x pw grid (ph * pw = proj_len; 1-D pooling
  of the raster order when proj_len has no factorisation that fits), i.e. spatial-reduction
  attention as in PVT (Wang et al. 2021). Pooled keys of equal-sized regions leave softmax
  weights proportional to the region means, so a pretrained ViT starts from a sensible point;
  with proj_len = Ht * Wt the initial E is the identity and the module is exact attention.
- Sharing (paper, section 4): `share_kv=True` uses E for both K and V ("key-value sharing");
  `per_head=False` uses one E for all heads ("headwise sharing").
"""
from __future__ import annotations

import math
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .base import TimmAttention


def pooling_projection(grid: tuple[int, int], proj_len: int) -> torch.Tensor:
    """[proj_len, Ht, Wt] area-pooling matrix from the patch grid to `proj_len` regions."""
    Ht, Wt = grid
    n = Ht * Wt
    eye = torch.eye(n, device="cpu").reshape(n, 1, Ht, Wt)
    pairs = [(a, proj_len // a) for a in range(1, proj_len + 1) if proj_len % a == 0]
    pairs = [(a, b) for a, b in pairs if a <= Ht and b <= Wt]
    if pairs:
        ph, pw = min(pairs, key=lambda p: abs(math.log(p[0] * Wt / (p[1] * Ht))))
        pooled = F.adaptive_avg_pool2d(eye, (ph, pw)).reshape(n, proj_len)
    else:
        pooled = F.adaptive_avg_pool1d(eye.reshape(n, 1, n), proj_len).reshape(n, proj_len)
    return pooled.t().reshape(proj_len, Ht, Wt).contiguous()


def resample_projection(proj: torch.Tensor, grid: tuple) -> torch.Tensor:
    """E [heads, proj_len, Ht, Wt] resampled to the (H, W) patch grid, [heads, proj_len, H, W]:
    bilinear (as timm resamples position embeddings), scaled by (Ht * Wt) / (H * W) so each
    projected row keeps its mass. The identity when (H, W) == (Ht, Wt). The forward at another
    input size, `LinformerAttention.set_grid` and weight loading into another build size all use
    this one function, so a resized model equals one built at the new size."""
    Ht, Wt = proj.shape[-2:]
    H, W = grid
    resized = F.interpolate(proj, size=(H, W), mode="bilinear", align_corners=False)
    return resized * ((Ht * Wt) / (H * W))


class LinformerAttention(TimmAttention):
    """Low-rank attention: patch keys/values projected to `proj_len` rows along the sequence."""

    display_rank = 1
    tiny_settings = MappingProxyType({"proj_len": 8})

    @classmethod
    def error_budgets(cls, grid: int) -> list[dict]:
        """Projection lengths of 1/16, 1/4 and all of the training grid's cells (the last is
        full rank: exact attention)."""
        cells = grid * grid
        return [{"proj_len": p} for p in sorted({max(1, cells // 16), max(1, cells // 4), cells})]

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        proj_len: int = 64,
        grid_size: tuple[int, int] = (14, 14),
        share_kv: bool = True,
        per_head: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(dim, num_heads, **kwargs)
        Ht, Wt = grid_size
        if not 1 <= proj_len <= Ht * Wt:
            raise ValueError(
                f"proj_len={proj_len} must be between 1 and the {Ht * Wt} patch tokens of the "
                f"{Ht}x{Wt} training grid: a longer projection saves nothing; lower proj_len or "
                "train at a higher resolution"
            )
        self.proj_len = proj_len
        self.train_grid = (Ht, Wt)
        heads = num_heads if per_head else 1
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        self.proj_k = nn.Parameter(torch.empty(heads, proj_len, Ht, Wt, **dd))
        self.proj_v = None if share_kv else nn.Parameter(torch.empty(heads, proj_len, Ht, Wt, **dd))
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        pool = pooling_projection(self.train_grid, self.proj_len)
        for p in (self.proj_k, self.proj_v):
            if p is not None and not p.is_meta:
                p.copy_(pool.expand_as(p))

    @torch.no_grad()
    def set_grid(self, grid: tuple[int, int]) -> None:
        """Store E at another patch grid (`resample_projection`), as `set_input_size` does for
        position embeddings; the forward then needs no resampling at that grid."""
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.train_grid:
            return
        if grid[0] * grid[1] < self.proj_len:
            raise ValueError(f"a {grid[0]}x{grid[1]} patch grid has fewer tokens than proj_len={self.proj_len}")
        for name in ("proj_k", "proj_v"):
            p = getattr(self, name)
            if p is not None:
                setattr(self, name, nn.Parameter(resample_projection(p, grid), requires_grad=p.requires_grad))
        self.train_grid = grid

    def _resampled(self, proj: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """[heads or 1, proj_len, H * W]: E resampled to the input grid, mass preserved."""
        return resample_projection(proj, (H, W)).flatten(2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid=None) -> torch.Tensor:
        H, W, P = self.patch_grid(q.shape[2], grid)
        e_k = self._resampled(self.proj_k, H, W).to(k.dtype)
        e_v = e_k if self.proj_v is None else self._resampled(self.proj_v, H, W).to(v.dtype)
        k = torch.cat([k[:, :, :P], torch.matmul(e_k, k[:, :, P:])], dim=2)
        v = torch.cat([v[:, :, :P], torch.matmul(e_v, v[:, :, P:])], dim=2)
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
