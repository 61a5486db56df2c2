"""Each mechanism reduces to exact attention in its limit, and its error shrinks with its budget."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effvit_deploy.attention import (
    AtrousAttention,
    LinformerAttention,
    NystromAttention,
    PerformerAttention,
    redraw_features,
)
from effvit_deploy.attention.atrous import from_windows, to_windows
from effvit_deploy.attention.linformer import pooling_projection
from effvit_deploy.attention.nystrom import iterative_pinv, segment_means

HEADS, HEAD_DIM = 4, 32
DIM = HEADS * HEAD_DIM


def qkv(n: int, scale: float = 1.0, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, n, HEAD_DIM)
    return (torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale,
            torch.randn(shape, generator=g))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def with_grid(module, grid):
    module.grid = grid
    return module


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


def test_nystrom_is_exact_with_all_landmarks():
    q, k, v = qkv(37, scale=0.6)
    ref = F.scaled_dot_product_attention(q, k, v)
    exact = NystromAttention(DIM, HEADS, landmarks=37, pinv_iterations=30, conv_kernel=0)
    torch.testing.assert_close(exact.attend(q, k, v), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_nystrom_error_shrinks_with_landmarks_and_pinv_iterations():
    q, k, v = qkv(96, scale=0.6)
    ref = F.scaled_dot_product_attention(q, k, v)
    by_landmarks = [
        rel_error(NystromAttention(DIM, HEADS, landmarks=m, pinv_iterations=30, conv_kernel=0).attend(q, k, v), ref)
        for m in (8, 32, 96)
    ]
    assert by_landmarks[0] > by_landmarks[1] > by_landmarks[2]
    by_iterations = [
        rel_error(NystromAttention(DIM, HEADS, landmarks=96, pinv_iterations=i, conv_kernel=0).attend(q, k, v), ref)
        for i in (2, 6, 30)
    ]
    assert by_iterations[0] > by_iterations[1] > by_iterations[2]


def test_nystrom_segments_are_uneven_not_padded():
    x = torch.arange(10.0).reshape(1, 10, 1)
    means = segment_means(x, 4)
    # token -> segment: floor(i * 4 / 10) = 0 0 0 1 1 2 2 2 3 3
    torch.testing.assert_close(means.flatten(), torch.tensor([1.0, 3.5, 6.0, 8.5]))


def test_iterative_pinv_is_per_sample_not_batch_coupled():
    a = torch.softmax(torch.randn(2, 1, 6, 6) * 3, dim=-1)
    scaled_batch = torch.stack([a[0], torch.softmax(torch.randn(1, 6, 6) * 30, dim=-1)])
    torch.testing.assert_close(iterative_pinv(a, 6)[0], iterative_pinv(scaled_batch, 6)[0])
    well_conditioned = torch.softmax(torch.eye(6) * 4, dim=-1).expand(1, 1, 6, 6)
    torch.testing.assert_close(iterative_pinv(well_conditioned, 20)[0, 0], torch.linalg.inv(well_conditioned[0, 0]), atol=1e-4, rtol=1e-4)


def test_nystrom_residual_conv_starts_at_zero():
    attn = NystromAttention(DIM, HEADS, landmarks=8, conv_kernel=33)
    assert attn.res_conv.weight.abs().sum() == 0


def test_atrous_is_exact_with_one_window_over_the_whole_grid():
    grid = (5, 7)
    q, k, v = qkv(1 + 35, scale=1.5)
    ref = F.scaled_dot_product_attention(q, k, v)
    for window in (7, 9):  # exactly covering, and covering with masked padding
        attn = with_grid(AtrousAttention(DIM, HEADS, window_size=window, dilations=(1,)), grid)
        torch.testing.assert_close(attn.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)


def test_atrous_error_shrinks_as_windows_grow():
    grid = (12, 12)
    q, k, v = qkv(1 + 144, scale=1.0)
    ref = F.scaled_dot_product_attention(q, k, v)
    errors = [
        rel_error(with_grid(AtrousAttention(DIM, HEADS, window_size=w, dilations=(1,)), grid).attend(q, k, v), ref)
        for w in (3, 6, 12)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-5


def test_atrous_windows_are_dilated_and_invertible():
    x = torch.arange(36.0).reshape(1, 1, 6, 6, 1)
    windows = to_windows(x, window=3, dilation=2)
    assert windows.shape == (1, 1, 4, 9, 1)
    # the first atrous window holds rows/cols 0, 2, 4
    assert windows[0, 0, 0, :, 0].tolist() == [0, 2, 4, 12, 14, 16, 24, 26, 28]
    assert torch.equal(from_windows(windows, 3, 2, 6, 6), x)


def test_atrous_gate_starts_uniform_and_class_token_attends_globally():
    grid = (4, 6)
    q, k, v = qkv(1 + 24)
    attn = with_grid(AtrousAttention(DIM, HEADS, window_size=2, dilations=(1, 2, 3)), grid)
    assert attn.gate.weight.abs().sum() == 0 and attn.gate.bias.abs().sum() == 0
    out = attn.attend(q, k, v)
    torch.testing.assert_close(out[:, :, :1], F.scaled_dot_product_attention(q[:, :, :1], k, v))


@pytest.mark.slow
def test_performer_error_shrinks_with_more_features():
    # Logit std ~0.4 (q, k entries of std 0.6, head dim 32): a pretrained ViT's typical range.
    q, k, v = qkv(197, scale=0.6, batch=1)
    ref = F.scaled_dot_product_attention(q, k, v)
    mean_error = []
    for m in (64, 256, 1024):
        errors = [rel_error(PerformerAttention(DIM, HEADS, num_features=m, feature_seed=s).attend(q, k, v), ref) for s in range(4)]
        mean_error.append(sum(errors) / len(errors))
    assert mean_error[0] > mean_error[1] > mean_error[2]
    assert mean_error[2] < 0.6 * mean_error[0]


def test_performer_is_finite_in_fp16_with_large_logits():
    q, k, v = qkv(64, scale=6.0)
    attn = PerformerAttention(DIM, HEADS, num_features=64).half()
    out = attn.attend(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_performer_features_redraw_deterministically_by_step():
    a, b = PerformerAttention(DIM, HEADS, num_features=16), PerformerAttention(DIM, HEADS, num_features=16)
    a.redraw_interval = b.redraw_interval = 10
    before = a.features.clone()
    assert redraw_features(a, 5) == 0 and torch.equal(a.features, before)
    assert redraw_features(a, 20) == 1 and not torch.equal(a.features, before)
    redraw_features(b, 20)
    assert torch.equal(a.features, b.features)
    assert "features" in a.state_dict()
