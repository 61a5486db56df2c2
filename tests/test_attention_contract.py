"""What every mechanism owes the rest of the project: its class facts (display rank, fp32 in an
fp16 graph, tiny test settings, error-table budgets) are usable by their readers, and a
mechanism changed for the GPU still exports to ONNX at three sizes and parses in TensorRT."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_IMG, tiny_model
from effvit_deploy.attention import ATTENTIONS, NoTokenMixing, TimmAttention
from effvit_deploy.models import mechanism_arguments


def test_every_mechanism_has_its_own_display_rank_exact_first_and_the_bound_after_them():
    ranks = {name: mechanism.display_rank for name, mechanism in ATTENTIONS.items()}
    assert len(set(ranks.values())) == len(ranks) and min(ranks, key=ranks.get) == "exact"
    assert max(ranks.values()) < NoTokenMixing.display_rank < TimmAttention.display_rank


def test_tiny_settings_fit_the_tiny_grid_and_keep_the_mechanism_approximate(attention):
    """The tests' tiny models (conftest.tiny_model) run on a 4x4 patch grid and, but for exact,
    differ from exact attention with the same weights: the tests exercise the approximation."""
    mechanism = ATTENTIONS[attention]
    assert set(mechanism.tiny_settings) <= mechanism_arguments(attention)
    model, exact = tiny_model(attention).eval(), tiny_model("exact").eval()
    model.load_state_dict(exact.state_dict(), strict=False)
    x = torch.randn(2, 3, TINY_IMG, TINY_IMG, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, reference = model(x), exact(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert torch.allclose(out, reference, atol=1e-4) == (attention == "exact")


def test_error_budgets_are_mechanism_arguments_and_only_exact_has_none(attention):
    budgets = ATTENTIONS[attention].error_budgets(14)
    assert all(set(budget) <= mechanism_arguments(attention) for budget in budgets)
    assert (budgets == []) == (attention == "exact")


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
