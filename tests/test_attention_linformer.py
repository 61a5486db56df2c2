"""Linformer: exact with a full-rank identity projection, its error shrinking as the projection
grows, and the projection resampled to other patch grids."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention_inputs import DIM, HEAD_DIM, HEADS, qkv, rel_error, with_grid
from effvit_deploy.attention import LinformerAttention
from effvit_deploy.attention.linformer import pooling_projection


def test_linformer_is_exact_with_full_rank_identity_projection():
    grid = (6, 5)
    q, k, v = qkv(1 + 30, scale=1.5)
    attn = with_grid(LinformerAttention(DIM, HEADS, proj_len=30, grid_size=grid), grid)
    assert torch.equal(pooling_projection(grid, 30).reshape(30, 30), torch.eye(30))
    torch.testing.assert_close(attn.attend(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_linformer_error_shrinks_as_projection_grows():
    grid = (8, 8)
    g = torch.Generator().manual_seed(0)
    # Spatially smooth keys and values, as patch features are: pooling loses little at high rank.
    smooth = lambda: F.interpolate(torch.randn(2 * HEADS, HEAD_DIM, 4, 4, generator=g), size=grid, mode="bilinear")
    k, v = (smooth().flatten(2).transpose(1, 2).reshape(2, HEADS, 64, HEAD_DIM) for _ in range(2))
    q = torch.randn(2, HEADS, 64, HEAD_DIM, generator=g)
    cls = torch.randn(2, HEADS, 1, HEAD_DIM, generator=g)
    q, k, v = (torch.cat([cls, t], dim=2) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v)
    errors = [
        rel_error(with_grid(LinformerAttention(DIM, HEADS, proj_len=p, grid_size=grid), grid).attend(q, k, v), ref)
        for p in (4, 16, 64)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_linformer_resamples_projection_to_other_grids_keeping_mass():
    attn = LinformerAttention(DIM, HEADS, proj_len=16, grid_size=(8, 8))
    resized = attn._resampled(attn.proj_k, 12, 20)
    assert resized.shape == (1, 16, 240)
    torch.testing.assert_close(resized.sum(-1), attn.proj_k.flatten(2).sum(-1))
    same = attn._resampled(attn.proj_k, 8, 8)
    torch.testing.assert_close(same, attn.proj_k.flatten(2))


def test_linformer_rejects_projection_longer_than_the_grid():
    with pytest.raises(ValueError, match="proj_len=100 must be between 1 and the 64 patch tokens"):
        LinformerAttention(DIM, HEADS, proj_len=100, grid_size=(8, 8))
