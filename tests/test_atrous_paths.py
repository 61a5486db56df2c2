"""Atrous attention's two execution paths against dense masked attention: the window partition
in bands of grid rows (eager), its checkpointed backward in training, FlexAttention serving
training (CUDA; on the CPU through a differentiable stand-in, since CPU FlexAttention has no
backward), the compiled FlexAttention forward on the CPU (block mask and position-bias score_mod),
and padded keys excluded exactly by the fused SDPA kernel."""
from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from effvit_deploy.attention import AtrousAttention
from effvit_deploy.attention import atrous


def dense_branch(q, k, v, grid, window, dilation, table=None):
    """One branch as dense masked attention over all N keys: patch query (r, c) sees patch key
    (r', c') when both share the dilation residue and the window of the sub-grid, and every
    prefix key; `table` [heads, 2w - 1, 2w - 1] adds the relative position bias."""
    H, W = grid
    P = q.shape[2] - H * W
    r, c = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)
    sub_r, sub_c = r // dilation, c // dilation
    same = (r[:, None] % dilation == r[None] % dilation) & (c[:, None] % dilation == c[None] % dilation)
    same &= (sub_r[:, None] // window == sub_r[None] // window) & (sub_c[:, None] // window == sub_c[None] // window)
    bias = torch.zeros(q.shape[1], H * W, H * W, dtype=q.dtype).masked_fill(~same, float("-inf"))
    if table is not None:
        wr, wc = sub_r % window, sub_c % window
        bias = bias + table[:, wr[:, None] - wr[None] + window - 1, wc[:, None] - wc[None] + window - 1]
    bias = torch.cat([torch.zeros(q.shape[1], H * W, P, dtype=q.dtype), bias], dim=-1)
    return F.scaled_dot_product_attention(q[:, :, P:], k, v, attn_mask=bias)


def dense_atrous(layer: AtrousAttention, q, k, v, grid):
    """The layer's patch outputs [B, heads, H * W, head_dim]: gated sum of dense branches."""
    B, h, N, c = q.shape
    P = N - grid[0] * grid[1]
    outs = [dense_branch(q, k, v, grid, layer.window_size, d, None if layer.position_bias is None else layer.position_bias[i])
            for i, d in enumerate(layer.dilations)]
    if layer.gate is None:
        return outs[0]
    weights = layer.gate(q[:, :, P:].transpose(1, 2).reshape(B, -1, h * c)).softmax(-1)  # [B, HW, branches]
    return sum(weights.transpose(1, 2)[:, None, i, :, None] * o for i, o in enumerate(outs))


def trained_like(window=3, dilations=(1, 2, 3), bias=True, seed=0, **kwargs) -> AtrousAttention:
    torch.manual_seed(seed)
    layer = AtrousAttention(64, 2, window_size=window, dilations=dilations, position_bias=bias, **kwargs)
    with torch.no_grad():
        layer.gate.weight.normal_(std=0.3)
        if bias:
            layer.position_bias.normal_(std=1.0)
    return layer


def qkv(N, seed=1, scale=1.5, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 2, N, 32, generator=g) * scale).requires_grad_(requires_grad) for _ in range(3)]


# (grid, prefix): tall, wide, odd-sized and padded grids; the first three split branches into bands
GRIDS = [((20, 9), 1), ((9, 20), 0), ((23, 17), 2), ((14, 14), 1)]


@pytest.mark.parametrize("grid,prefix", GRIDS)
def test_window_path_in_row_bands_equals_dense_attention_with_gate_and_bias(grid, prefix):
    layer = trained_like().eval()
    if grid[0] >= 18:  # rows enough for two bands of 3 x 3 windows at dilations 1 and 2
        assert len(atrous._row_bands(3, 1, grid[0])) == 2 and len(atrous._row_bands(3, 2, grid[0])) == 2
    q, k, v = qkv(prefix + grid[0] * grid[1])
    with torch.no_grad():
        out = layer.attend(q, k, v, grid)
        torch.testing.assert_close(out[:, :, prefix:], dense_atrous(layer, q, k, v, grid), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[:, :, :prefix], F.scaled_dot_product_attention(q[:, :, :prefix], k, v))
    assert out.transpose(1, 2).is_contiguous(), "laid out [B, N, heads, head_dim]: the output projection reads a view"


def test_row_bands_start_on_window_rows_and_cover_the_grid():
    for H in range(1, 40):
        for window in (2, 3, 7):
            for d in (1, 2, 3):
                bands = atrous._row_bands(window, d, H)
                assert bands[0][0] == 0 and bands[-1][1] == H
                assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
                assert all(r0 % (window * d) == 0 for r0, _ in bands)


def test_window_layout_traced_for_export_equals_eager():
    """Under torch.export the layout's index divisions truncate (TensorRT parses that), in eager
    and torch.compile they floor (inductor compiles that): the same indices and mask on every
    small grid."""
    cpu = torch.device("cpu")
    for H in range(1, 16):
        for W in range(1, 16):
            for window, dilations in ((1, (1,)), (2, (1, 2)), (3, (1, 2, 3)), (7, (1, 2, 3)), (4, (2, 5))):
                eager = atrous.window_layout(window, dilations, H, W, 1, cpu)
                with mock.patch.object(torch.compiler, "_is_exporting_flag", True):
                    exported = atrous.window_layout(window, dilations, H, W, 1, cpu)
                assert eager[4:] == exported[4:]
                for a, b in zip(eager[:4], exported[:4]):
                    assert torch.equal(a, b), (H, W, window, dilations)


@pytest.mark.parametrize("grid,prefix", GRIDS[:2])
def test_training_backward_through_the_checkpointed_branches_matches_dense_attention(grid, prefix):
    layer = trained_like().train()
    q, k, v = qkv(prefix + grid[0] * grid[1], requires_grad=True)
    g = torch.randn(2, 2, grid[0] * grid[1], 32, generator=torch.Generator().manual_seed(5))
    (layer.attend(q, k, v, grid)[:, :, prefix:] * g).sum().backward()
    mine = [t.grad.clone() for t in (q, k, v, layer.gate.weight, layer.position_bias)]
    for t in (q, k, v, layer.gate.weight, layer.position_bias):
        t.grad = None
    (dense_atrous(layer, q, k, v, grid) * g).sum().backward()
    for got, want in zip(mine, (q.grad, k.grad, v.grad, layer.gate.weight.grad, layer.position_bias.grad)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_training_saves_neither_window_copies_nor_branch_outputs():
    # tensors autograd keeps for backward, other than q, k, v (views of one qkv projection, as
    # the layer's forward makes them) and the [B, HW, branches] gate weights: none
    layer = trained_like(bias=False).train()
    grid, N = (20, 9), 1 + 180
    qkv_out = torch.randn(2, N, 3 * 64, requires_grad=True)
    q, k, v = qkv_out.reshape(2, N, 3, 2, 32).permute(2, 0, 3, 1, 4).unbind(0)
    saved = []

    def pack(t):
        if t.untyped_storage().data_ptr() != qkv_out.untyped_storage().data_ptr() and t.numel() > 2 * N * 3:
            saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer.attend(q, k, v, grid).sum().backward()
    assert saved == [], saved


@pytest.mark.slow
def test_training_step_compiles_as_one_graph_with_the_recomputed_branches():
    layer = trained_like(window=2, dilations=(1, 2)).train()
    x = torch.randn(2, 1 + 4 * 6, 64, requires_grad=True)
    layer(x, grid=(4, 6)).square().sum().backward()
    eager = [t.grad.clone() for t in (x, *layer.parameters())]
    layer.zero_grad()
    x.grad = None
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, dynamic=False)  # inductor, forward and backward
    compiled(x, grid=(4, 6)).square().sum().backward()
    for got, want in zip((x.grad, *(p.grad for p in layer.parameters())), eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _dense_flex(q, k, v, score_mod=None, block_mask=None):
    """A differentiable stand-in for FlexAttention on the CPU (whose FlexAttention has no
    backward): its block mask's mask_mod as a dense boolean mask."""
    from torch.nn.attention.flex_attention import create_mask

    assert score_mod is None
    mask = create_mask(block_mask.mask_mod, None, None, q.shape[2], k.shape[2], device="cpu")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_flex_path_serves_training_and_matches_the_window_path():
    layer = trained_like(window=2, dilations=(1, 2), bias=False).train()
    grid, prefix = (5, 7), 1
    q, k, v = qkv(prefix + 35, requires_grad=True)
    g = torch.randn(2, 2, prefix + 35, 32, generator=torch.Generator().manual_seed(5))
    (layer.attend(q, k, v, grid) * g).sum().backward()
    window = [t.grad.clone() for t in (q, k, v, layer.gate.weight)]
    for t in (q, k, v, layer.gate.weight):
        t.grad = None
    with mock.patch.object(atrous, "use_flex", lambda q: True), \
            mock.patch.object(atrous, "_flex_attention", wraps=_dense_flex) as flex:
        (layer.attend(q, k, v, grid) * g).sum().backward()
    assert flex.call_count == 2 * 2, "each branch once forward, once recomputed in backward"
    for got, want in zip((q.grad, k.grad, v.grad, layer.gate.weight.grad), window):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_training_with_attention_dropout_takes_the_window_path():
    layer = trained_like(window=2, dilations=(1, 2), bias=False, attn_drop=0.1).train()
    q, k, v = qkv(1 + 35, requires_grad=True)
    with mock.patch.object(atrous, "use_flex", lambda q: True), \
            mock.patch.object(atrous, "_flex_attention", side_effect=AssertionError("FlexAttention has no dropout")):
        out = layer.attend(q, k, v, (5, 7))
        out.sum().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.slow
@pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split(".")[:2]) < (2, 13),
                    reason="inductor's CPU FlexAttention lowering before torch 2.13 refuses q, k, v that are views "
                           "of one buffer (the CUDA lowering takes them)")
def test_compiled_flex_attention_on_the_cpu_matches_the_window_path():
    """The CUDA path's code as compiled, on the CPU: the block mask and the position-bias
    score_mod through inductor's FlexAttention template (forward only: CPU FlexAttention has no
    backward), on a padded, non-square grid with a prefix token."""
    layer = trained_like(window=3, dilations=(1, 2)).eval()
    x = torch.randn(2, 1 + 8 * 10, 64, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        window = layer(x, grid=(8, 10))
        with mock.patch.object(atrous, "use_flex", lambda q: True):
            torch._dynamo.reset()
            flex = torch.compile(layer, fullgraph=True)(x, grid=(8, 10))
    torch.testing.assert_close(flex, window, atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_cuda_compiled_flex_attention_trains_like_the_window_path():
    layer = trained_like(window=7, dilations=(1, 2, 3)).cuda().train()
    grid, prefix = (20, 23), 1
    q, k, v = (t.detach().cuda().requires_grad_() for t in qkv(prefix + 20 * 23))
    g = torch.randn(2, 2, prefix + 20 * 23, 32, device="cuda")
    grads = []
    for flex in (True, False):
        with mock.patch.object(atrous, "use_flex", lambda q, flex=flex: flex):
            (layer.attend(q, k, v, grid) * g).sum().backward()
        grads.append([t.grad.clone() for t in (q, k, v, layer.gate.weight, layer.position_bias)])
        for t in (q, k, v, layer.gate.weight, layer.position_bias):
            t.grad = None
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_padded_keys_are_excluded_exactly_when_scores_fall_below_minus_1e4():
    # Large-norm q/k: every score about -400^2 / sqrt(32) = -2.8e4, so a finite -1e4 stand-in for
    # padding would let the padded keys win (errors of order 1). Against float64 dense attention
    # the fused kernel's fp32 rounding of such scores (~2e-3 absolute) is all that remains.
    grid, window = (5, 7), 4  # 5 x 7 on 4 x 4 windows: padded rows and columns
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(1, 4, 1, 32, generator=g), dim=-1) * 400
    q = u + torch.randn(1, 4, 1 + 35, 32, generator=g) * 3
    k = -u + torch.randn(1, 4, 1 + 35, 32, generator=g) * 3
    v = torch.randn(1, 4, 1 + 35, 32, generator=g)
    layer = AtrousAttention(128, 4, window_size=window, dilations=(1,))
    out = layer.attend(q, k, v, grid)[:, :, 1:]
    ref = dense_branch(q.double(), k.double(), v.double(), grid, window, 1)
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max() < 1e-2
