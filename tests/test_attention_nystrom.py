"""Nystromformer: exact with every patch a landmark, its error falling with the landmarks, and a
pseudo-inverse that converges and stays finite on the ill-conditioned kernels of trained models
(trained-like and captured q/k/v), in PyTorch and in ONNX Runtime."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention_inputs import DIM, HEAD_DIM, HEADS, TRAINED_GRIDS, qkv, rel_error, trained_qkv, with_grid
from effvit_deploy.attention import NystromAttention
from effvit_deploy.attention.nystrom import PINV_RIDGE_SCALE, block_means, iterative_pinv, landmark_grid, segment_means


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
