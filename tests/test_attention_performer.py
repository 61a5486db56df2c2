"""Performer (FAVOR+): its error shrinking with more random features, the paper's estimator on
rows of ordinary norm, no zero or non-finite rows at large norms or in fp16, and features
redrawn deterministically by step."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attention_inputs import DIM, HEAD_DIM, HEADS, qkv, rel_error
from effvit_deploy.attention import PerformerAttention, redraw_features


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
