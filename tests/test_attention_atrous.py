"""Atrous (ACC-ViT-style dilated window) attention: exact with one window over the whole grid,
each branch equal to dense masked attention, windows dilated and invertible, position bias
relative within windows, and ACC-ViT's power-of-two rates."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention_inputs import DIM, HEADS, atrous_reference, qkv, rel_error, with_grid
from effvit_deploy.attention import AtrousAttention
from effvit_deploy.attention.atrous import window_layout


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
