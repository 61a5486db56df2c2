"""Each mechanism reduces to exact attention in its limit, and its error shrinks with its budget."""
from __future__ import annotations

import functools
from pathlib import Path

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
from effvit_deploy.attention.atrous import window_layout
from effvit_deploy.attention.linformer import pooling_projection
from effvit_deploy.attention.nystrom import PINV_RIDGE_SCALE, block_means, iterative_pinv, landmark_grid, segment_means

HEADS, HEAD_DIM = 4, 32
DIM = HEADS * HEAD_DIM


def qkv(n: int, scale: float = 1.0, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, HEADS, n, HEAD_DIM)
    return (torch.randn(shape, generator=g) * scale, torch.randn(shape, generator=g) * scale,
            torch.randn(shape, generator=g))


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


class with_grid:
    """A mechanism called on a fixed patch grid: the grid argument filled in for every call."""

    def __init__(self, module, grid):
        self.module, self.grid = module, grid

    def __call__(self, x):
        return self.module(x, grid=self.grid)

    def attend(self, q, k, v):
        return self.module.attend(q, k, v, self.grid)

    def _landmarks(self, x, prefix):
        return self.module._landmarks(x, self.grid, prefix)

    def eval(self):
        self.module.eval()
        return self

    def __getattr__(self, name):
        return getattr(self.module, name)


def trained_like_qkv(grid=(8, 8), norm: float = 3.0, seed: int = 0, batch: int = 2):
    """q/k as a trained ViT makes them: spatially smooth, low-rank fields (neighbouring patches
    alike) of large norm, so softmax rows are near-duplicates and the all-token landmark kernel
    has a condition number >= 1e7 (asserted where it matters); plus a class token."""
    g = torch.Generator().manual_seed(seed)
    H, W = grid

    def field():
        low = torch.randn(batch * HEADS, HEAD_DIM, 3, 3, generator=g)
        x = F.interpolate(low, size=grid, mode="bilinear", align_corners=False)
        return F.normalize(x.flatten(2).transpose(1, 2).reshape(batch, HEADS, H * W, HEAD_DIM), dim=-1)

    base = field()
    q, k = base * norm, (base + 0.3 * field()) * norm
    cls_q = torch.randn(batch, HEADS, 1, HEAD_DIM, generator=g)
    cls_k = F.normalize(base.mean(2, keepdim=True), dim=-1) * norm
    v = torch.randn(batch, HEADS, H * W + 1, HEAD_DIM, generator=g)
    return torch.cat([cls_q, q], 2), torch.cat([cls_k, k], 2), v


def condition_number(q, k) -> float:
    kernel = torch.softmax(q.double() @ k.double().transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1)
    return torch.linalg.cond(kernel).min().item()


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
    # Every patch token a landmark: exact attention, whatever the conditioning or iterations.
    q, k, v = qkv(37, scale=1.5)
    ref = F.scaled_dot_product_attention(q, k, v)
    no_grid = NystromAttention(DIM, HEADS, landmarks=37, pinv_iterations=0, conv_kernel=0)
    torch.testing.assert_close(no_grid.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    with_prefix = with_grid(NystromAttention(DIM, HEADS, landmarks=36, conv_kernel=0), (6, 6))
    torch.testing.assert_close(with_prefix.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    q, k, v = trained_like_qkv((8, 8), norm=6.0)
    ref = F.scaled_dot_product_attention(q, k, v)
    for landmarks in (64, 100):
        attn = with_grid(NystromAttention(DIM, HEADS, landmarks=landmarks, conv_kernel=0), (8, 8))
        torch.testing.assert_close(attn.attend(q, k, v), ref, atol=1e-5, rtol=1e-5)
    # one landmark fewer than the patches: the Nystrom formula, no longer exact
    fewer = with_grid(NystromAttention(DIM, HEADS, landmarks=63, conv_kernel=0), (8, 8))
    assert rel_error(fewer.attend(q, k, v), ref) > 1e-3


@pytest.mark.parametrize("grid,norm", [((8, 8), 3.0), ((16, 16), 6.0)])
def test_nystrom_error_is_finite_and_non_increasing_over_pinv_iterations_on_trained_like_inputs(grid, norm):
    q, k, v = trained_like_qkv(grid, norm=norm)
    assert condition_number(q, k) >= 1e4
    ref = F.scaled_dot_product_attention(q, k, v)
    errors = [
        rel_error(with_grid(NystromAttention(DIM, HEADS, landmarks=16, pinv_iterations=i, conv_kernel=0), grid).attend(q, k, v), ref)
        for i in range(0, 65)
    ]
    assert all(e == e and e < 1 for e in errors), errors  # finite (the paper's fp32 iteration: NaN by 40)
    assert all(later <= earlier + 1e-6 for earlier, later in zip(errors, errors[1:])), errors
    assert abs(errors[8] - errors[-1]) < 1e-4  # converged at the default 8 iterations


def test_nystrom_is_stable_under_bf16_autocast_for_any_iteration_count():
    grid = (8, 8)
    q, k, v = trained_like_qkv(grid)
    ref = F.scaled_dot_product_attention(q, k, v)
    fp32 = with_grid(NystromAttention(DIM, HEADS, landmarks=16, conv_kernel=0), grid).attend(q, k, v)
    for iterations in (8, 40, 64):
        attn = with_grid(NystromAttention(DIM, HEADS, landmarks=16, pinv_iterations=iterations, conv_kernel=0), grid)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attn.attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
        assert out.dtype == torch.bfloat16 and rel_error(out.float(), fp32) < 1e-2  # bf16 inputs: ~3e-3
        assert rel_error(out.float(), ref) < rel_error(fp32, ref) + 1e-2


def test_iterative_pinv_converges_monotonically_to_the_ridge_inverse_on_ill_conditioned_kernels():
    q, k, _ = trained_like_qkv((8, 8))
    kernels = [torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1)]
    for res in ("128", "256"):  # a trained model's landmark kernels
        q, k, _ = trained_qkv(res, "3")
        land = lambda x: torch.cat([x[..., :1, :], block_means(x[..., 1:, :], TRAINED_GRIDS[res], 64)], dim=-2)
        kernels.append(torch.softmax(land(q) @ land(k).transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1))
    for a in kernels:
        a64 = a.double()
        m = a.shape[-1]
        norms = a64.abs().sum(-2).amax(-1) * a64.abs().sum(-1).amax(-1)
        mu2 = ((PINV_RIDGE_SCALE / m) ** 2 * norms)[..., None, None]
        eye = torch.eye(m, dtype=torch.float64)
        ridge_inverse = torch.linalg.solve(a64.transpose(-1, -2) @ a64 + mu2 * eye, a64.transpose(-1, -2))
        distances = []
        for iterations in range(0, 65):
            z = iterative_pinv(a, iterations).double()
            assert torch.isfinite(z).all()
            distances.append(((z - ridge_inverse).norm() / ridge_inverse.norm()).item())
        assert all(later <= earlier + 1e-6 for earlier, later in zip(distances, distances[1:])), distances
        assert distances[8] < 1e-4, distances


@pytest.mark.parametrize("it", [4, 8, 16])
def test_nystrom_error_falls_with_landmarks_on_trained_like_inputs(it):
    grid = (8, 8)
    q, k, v = trained_like_qkv(grid)
    ref = F.scaled_dot_product_attention(q, k, v)
    errors = [
        rel_error(with_grid(NystromAttention(DIM, HEADS, landmarks=m, pinv_iterations=it, conv_kernel=0), grid).attend(q, k, v), ref)
        for m in (1, 2, 4, 8, 16, 32, 48, 64)
    ]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5  # all patch tokens are landmarks: exact


TRAINED_GRIDS = {"128": (16, 16), "256": (32, 32)}


@functools.lru_cache(maxsize=1)
def _trained_tensors() -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(__file__).parent / "data" / "cluttered_qkv.safetensors"))


def trained_qkv(resolution: str, block: str):
    """q, k, v of one image in block `block` of a trained exact ViT (cluttered digits, 3 heads of
    32) at `resolution` px: 1 class + 256 or 1,024 patch tokens (tests/data/README.md)."""
    return tuple(_trained_tensors()[f"{resolution}/{block}/{name}"].float() for name in "qkv")


@pytest.mark.parametrize("resolution", ["128", "256"])
@pytest.mark.parametrize("block", ["0", "3"])
def test_nystrom_on_a_trained_models_activations(resolution, block):
    """Large norms and peaked softmax (block 3: a class-token sink): the error falls with the
    landmarks at the default iterations, reaches exact attention with every patch a landmark, and
    stays finite and converged for any iteration count."""
    q, k, v = trained_qkv(resolution, block)
    grid = TRAINED_GRIDS[resolution]
    assert q.norm(dim=-1).amax() > 10
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()

    def error(landmarks: int, iterations: int = 8) -> float:
        attn = with_grid(NystromAttention(96, 3, landmarks=landmarks, pinv_iterations=iterations, conv_kernel=0), grid)
        return rel_error(attn.attend(q, k, v), ref)

    by_landmarks = [error(m) for m in (4, 16, 32, 64, 128, grid[0] * grid[1])]
    assert all(later < earlier for earlier, later in zip(by_landmarks, by_landmarks[1:])), by_landmarks
    assert by_landmarks[-1] < 1e-5
    by_iterations = [error(64, i) for i in (8, 12, 16, 24, 32, 48, 64)]
    assert all(e == e for e in by_iterations) and max(by_iterations) - min(by_iterations) < 1e-3, by_iterations
    assert by_iterations[0] < error(64, 0)


def test_nystrom_prefix_tokens_are_landmarks_of_their_own():
    grid = (4, 4)
    attn = with_grid(NystromAttention(DIM, HEADS, landmarks=4), grid)
    x = torch.randn(1, 1, 17, 2)
    landmarks = attn._landmarks(x, prefix=1)
    assert landmarks.shape[-2] == 1 + 4
    torch.testing.assert_close(landmarks[..., 0, :], x[..., 0, :])
    torch.testing.assert_close(landmarks[..., 1:, :], block_means(x[..., 1:, :], grid, 4))
    one = with_grid(NystromAttention(DIM, HEADS, landmarks=1, conv_kernel=0), grid)._landmarks(x, prefix=1)
    torch.testing.assert_close(one[..., 1, :], x[..., 1:, :].mean(-2))


@pytest.mark.parametrize("grid,landmarks", [((4, 4), 4), ((5, 7), 6), ((6, 6), 16), ((1, 9), 8), ((3, 3), 64), ((14, 14), 32), ((1, 128), 64), ((40, 2), 16)])
def test_block_means_are_the_means_of_a_block_partition_of_the_patch_grid(grid, landmarks):
    H, W = grid
    x = torch.randn(2, 3, H * W, 5, dtype=torch.float64) * 30
    rows, columns = landmark_grid(landmarks, grid)
    row_of = torch.arange(H) * rows // H
    column_of = torch.arange(W) * columns // W
    owner = (row_of[:, None] * columns + column_of[None, :]).flatten()
    pooling = (owner[None] == torch.arange(rows * columns)[:, None]).double()
    torch.testing.assert_close(block_means(x, grid, landmarks), pooling @ x / pooling.sum(-1, keepdim=True))


def test_nystrom_segments_are_uneven_not_padded():
    x = torch.arange(10.0).reshape(1, 10, 1)
    means = segment_means(x, 4)
    # token -> segment: floor(i * 4 / 10) = 0 0 0 1 1 2 2 2 3 3
    torch.testing.assert_close(means.flatten(), torch.tensor([1.0, 3.5, 6.0, 8.5]))


@pytest.mark.parametrize("n", [1, 7, 64, 65, 197, 1025])
def test_segment_means_match_dense_pooling_for_any_length(n):
    x = torch.randn(2, 3, n, 5, dtype=torch.float64) * 30
    for segments in sorted({1, min(n, 2), min(n, 7), min(n, 64), n}):
        owner = torch.arange(n) * segments // n
        pooling = (owner[None] == torch.arange(segments)[:, None]).double()
        expected = pooling @ x / pooling.sum(-1, keepdim=True)
        torch.testing.assert_close(segment_means(x, segments), expected)


def test_iterative_pinv_is_per_sample_not_batch_coupled():
    a = torch.softmax(torch.randn(2, 1, 6, 6) * 3, dim=-1)
    scaled_batch = torch.stack([a[0], torch.softmax(torch.randn(1, 6, 6) * 30, dim=-1)])
    torch.testing.assert_close(iterative_pinv(a, 6)[0], iterative_pinv(scaled_batch, 6)[0])
    well_conditioned = torch.softmax(torch.eye(6) * 4, dim=-1).expand(1, 1, 6, 6)
    torch.testing.assert_close(iterative_pinv(well_conditioned, 20, ridge=1e-6)[0, 0], torch.linalg.inv(well_conditioned[0, 0]), atol=1e-4, rtol=1e-4)


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
    # 6 x 6 patches after one prefix token, 3 x 3 windows at dilation 2: four windows of nine
    query, keys, mask, inverse, counts, _ = window_layout(3, (2,), 6, 6, 1, torch.device("cpu"))
    assert counts == [4] and mask.shape == (4, 9, 10) and bool(mask.all())  # no padding here
    # the first atrous window holds rows/cols 0, 2, 4 (token = 1 + 6 * row + col)
    assert query[:9].tolist() == [1 + t for t in (0, 2, 4, 12, 14, 16, 24, 26, 28)]
    assert keys[:10].tolist() == query[:9].tolist() + [0]  # then the prefix key
    assert torch.equal(query[inverse], torch.arange(1, 37))  # every patch, once, back in place


def test_atrous_gate_starts_uniform_and_class_token_attends_globally():
    grid = (4, 6)
    q, k, v = qkv(1 + 24)
    attn = with_grid(AtrousAttention(DIM, HEADS, window_size=2, dilations=(1, 2, 3)), grid)
    assert attn.gate.weight.abs().sum() == 0 and attn.gate.bias.abs().sum() == 0
    out = attn.attend(q, k, v)
    torch.testing.assert_close(out[:, :, :1], F.scaled_dot_product_attention(q[:, :, :1], k, v))


def atrous_reference(q, k, v, grid, window, dilation, table=None):
    """One atrous branch as dense masked attention: patch query i sees patch key j when they
    share the dilation residue and their sub-grid positions share a window_size x window_size
    window, plus every prefix key; `table` [heads, 2w - 1, 2w - 1] adds relative position bias."""
    H, W = grid
    P = q.shape[2] - H * W
    r, c = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    same = (r[:, None] % dilation == r[None] % dilation) & (c[:, None] % dilation == c[None] % dilation)
    same &= ((r[:, None] // dilation) // window == (r[None] // dilation) // window)
    same &= ((c[:, None] // dilation) // window == (c[None] // dilation) // window)
    bias = torch.where(same, 0.0, float("-inf")).expand(HEADS, -1, -1).clone()
    if table is not None:
        wr, wc = (r // dilation) % window, (c // dilation) % window
        bias = bias + table[:, wr[:, None] - wr[None] + window - 1, wc[:, None] - wc[None] + window - 1]
    bias = torch.cat([torch.zeros(HEADS, H * W, P), bias], dim=-1)
    return F.scaled_dot_product_attention(q[:, :, P:], k, v, attn_mask=bias)


@pytest.mark.parametrize("grid, window, dilation", [((14, 14), 7, 3), ((6, 9), 3, 2), ((5, 7), 4, 4), ((9, 5), 2, 1)])
def test_atrous_branch_matches_dense_masked_attention_with_less_padding(grid, window, dilation):
    q, k, v = qkv(1 + grid[0] * grid[1], scale=1.5)
    attn = with_grid(AtrousAttention(DIM, HEADS, window_size=window, dilations=(dilation,)), grid)
    torch.testing.assert_close(attn.attend(q, k, v)[:, :, 1:], atrous_reference(q, k, v, grid, window, dilation), atol=1e-5, rtol=1e-5)


def test_atrous_position_bias_is_relative_within_windows_and_starts_at_zero():
    grid, window = (6, 9), 3
    q, k, v = qkv(1 + 54, scale=1.5)
    attn = with_grid(AtrousAttention(DIM, HEADS, window_size=window, dilations=(1, 2), position_bias=True), grid)
    assert attn.position_bias.shape == (2, HEADS, 5, 5) and attn.position_bias.abs().sum() == 0
    plain = with_grid(AtrousAttention(DIM, HEADS, window_size=window, dilations=(1, 2)), grid)
    torch.testing.assert_close(attn.attend(q, k, v), plain.attend(q, k, v), atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        attn.position_bias.normal_(std=2.0)
        attn.gate.weight.normal_()
    weights = attn.gate(q[:, :, 1:].transpose(1, 2).reshape(2, 54, DIM)).softmax(-1).transpose(1, 2).unsqueeze(-1)
    expected = sum(
        weights[:, i : i + 1] * atrous_reference(q, k, v, grid, window, d, attn.position_bias[i].detach())
        for i, d in enumerate((1, 2))
    )
    torch.testing.assert_close(attn.attend(q, k, v)[:, :, 1:], expected, atol=1e-5, rtol=1e-5)


def test_atrous_is_exact_in_its_limit_with_position_bias_and_pow2_options():
    grid = (5, 7)
    q, k, v = qkv(1 + 35, scale=1.5)
    attn = with_grid(AtrousAttention(DIM, HEADS, window_size=7, dilations="pow2", position_bias=True, grid_size=grid), grid)
    assert attn.dilations == (1,)
    torch.testing.assert_close(attn.attend(q, k, v), F.scaled_dot_product_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_atrous_pow2_dilations_follow_acc_vit():
    rates = lambda grid, window: AtrousAttention(DIM, HEADS, window_size=window, dilations="pow2", grid_size=grid).dilations
    assert rates((56, 56), 7) == (1, 2, 4, 8)
    assert rates((28, 28), 7) == (1, 2, 4)
    assert rates((14, 14), 7) == (1, 2)
    assert rates((7, 7), 7) == (1,)
    with pytest.raises(ValueError, match="dilations must be integers or 'pow2'"):
        AtrousAttention(DIM, HEADS, dilations="powers")


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


def favor_plus_reference(attn: PerformerAttention, q, k, v) -> torch.Tensor:
    """The paper's estimator written directly, in float64: phi(x) = exp(w^T x - |x|^2 / 2) / sqrt(m)."""
    w = attn.features.double()

    def phi(x):
        x = x.double() * attn.head_dim**-0.25
        return torch.exp(x @ w.t() - (x * x).sum(-1, keepdim=True) / 2) / attn.num_features**0.5

    phi_q, phi_k = phi(q), phi(k)
    return (phi_q @ (phi_k.transpose(-1, -2) @ v.double())) / (phi_q @ phi_k.sum(-2, keepdim=True).transpose(-1, -2))


@pytest.mark.parametrize("head_dim", [32, 64])
def test_performer_rows_of_ordinary_norm_match_the_paper_estimator(head_dim):
    q, k, v = (t[..., :head_dim] for t in qkv(197, scale=0.6, batch=1))
    q, k, v = (torch.cat([t, t], dim=-1)[..., :head_dim] for t in (q, k, v))
    attn = PerformerAttention(HEADS * head_dim, HEADS, num_features=256)
    out = attn.attend(q, k, v)
    expected = favor_plus_reference(attn, q, k, v)
    assert ((out.double() - expected).norm() / expected.norm()).item() <= 1e-6


@pytest.mark.parametrize("head_dim", [32, 64])
@pytest.mark.parametrize("query_norm", [34.0, 50.0, 200.0, 1e4])
def test_performer_has_no_zero_rows_at_any_query_norm(head_dim, query_norm):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(1, HEADS, 64, head_dim, generator=g), dim=-1) * query_norm
    k = torch.randn(1, HEADS, 64, head_dim, generator=g) * 0.6
    v = torch.randn(1, HEADS, 64, head_dim, generator=g)
    out = PerformerAttention(HEADS * head_dim, HEADS, num_features=256).attend(q, k, v)
    assert torch.isfinite(out).all()
    assert (out.abs().amax(-1) > 0).all()
    # every row is a convex combination of values: inside their per-column range
    assert (out <= v.amax(-2, keepdim=True) + 1e-4).all() and (out >= v.amin(-2, keepdim=True) - 1e-4).all()


def test_performer_is_finite_with_large_norm_keys_too():
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(1, HEADS, 64, HEAD_DIM, generator=g), dim=-1) * 60
    k = F.normalize(torch.randn(1, HEADS, 64, HEAD_DIM, generator=g), dim=-1) * 60
    out = PerformerAttention(DIM, HEADS, num_features=64).attend(q, k, torch.randn(1, HEADS, 64, HEAD_DIM, generator=g))
    assert torch.isfinite(out).all() and (out.abs().amax(-1) > 0).all()


def test_performer_features_redraw_deterministically_by_step():
    a, b = PerformerAttention(DIM, HEADS, num_features=16), PerformerAttention(DIM, HEADS, num_features=16)
    a.redraw_interval = b.redraw_interval = 10
    before = a.features.clone()
    assert redraw_features(a, 5) == 0 and torch.equal(a.features, before)
    assert redraw_features(a, 20) == 1 and not torch.equal(a.features, before)
    redraw_features(b, 20)
    assert torch.equal(a.features, b.features)
    assert "features" in a.state_dict()


ONNX_CASES = {
    "nystrom": {"landmarks": 8, "conv_kernel": 3},  # 32 px: 5 tokens, fewer than the landmarks
    "performer": {"num_features": 32},
    "atrous": {"window_size": 2, "dilations": "pow2", "position_bias": True},
}


@pytest.mark.slow
@pytest.mark.parametrize("attention", sorted(ONNX_CASES))
def test_changed_mechanisms_match_onnx_at_three_sizes_and_parse_in_tensorrt(tmp_path, attention):
    import onnxruntime as ort

    from effvit_deploy import build_model
    from effvit_deploy.export import check_tensorrt_compat
    from effvit_deploy.export.onnx import export_onnx, make_tensorrt_friendly

    torch.manual_seed(0)
    model = build_model("vit_tiny_patch16_224", attention=attention, num_classes=10, depth=1, img_size=32,
                        patch_size=8, embed_dim=64, num_heads=2, **ONNX_CASES[attention]).eval()
    with torch.no_grad():  # trained-like: non-zero position bias and gate
        for name, p in model.named_parameters():
            if "position_bias" in name or "gate" in name or "res_conv" in name:
                p.normal_(std=0.5)
    path = export_onnx(model, tmp_path / "model.onnx", sample_size=(64, 64), max_batch=2, max_res=256)
    make_tensorrt_friendly(path, min_res=32, img_size=32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w in [(32, 32), (64, 96), (128, 128)]:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        with torch.inference_mode():
            expected = model(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert abs(got - expected).max() <= 1e-4, (attention, h, w)
    report = check_tensorrt_compat(path)
    assert report.ok, report.summary()


class _Attend(torch.nn.Module):
    def __init__(self, layer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, q, k, v):
        return self.layer.attend(q, k, v)


@pytest.mark.slow
@pytest.mark.parametrize("resolution", ["128", "256"])
def test_nystrom_onnx_parity_on_a_trained_models_activations(tmp_path, resolution):
    """The ridge bounds the rounding that the ill-conditioned kernels of a trained model amplify:
    ONNX Runtime and PyTorch agree on its q/k/v to float32 rounding."""
    import onnxruntime as ort

    q, k, v = trained_qkv(resolution, "3")
    layer = with_grid(NystromAttention(96, 3, landmarks=64, conv_kernel=0), TRAINED_GRIDS[resolution]).eval()
    path = tmp_path / "nystrom.onnx"
    with torch.no_grad():
        expected = layer.attend(q, k, v)
        torch.onnx.export(_Attend(layer).eval(), (q, k, v), str(path), dynamo=True, optimize=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, dict(zip([i.name for i in session.get_inputs()], (q.numpy(), k.numpy(), v.numpy()))))[0])
    assert rel_error(got, expected) < 1e-5 and (got - expected).abs().max() < 1e-4
