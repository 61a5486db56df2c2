"""The approximation-error harness: exact limits give zero error, budgets order the errors, the
budgets come from each mechanism's class, and the bf16 rows measure bf16 rounding against a
float64 reference."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from effvit_deploy.approximation import Mechanism, block_errors, default_mechanisms, render_table
from effvit_deploy.attention import ATTENTIONS, ExactAttention, PerformerAttention
from markdown_check import assert_tables_parse


@pytest.mark.slow
def test_limits_have_zero_error_and_budgets_order_errors():
    model = tiny_model("exact")
    images = torch.randn(2, 3, 64, 64)
    rows = block_errors(model, images, [
        Mechanism("linformer", {"proj_len": 16}),
        Mechanism("atrous", {"window_size": 4, "dilations": [1]}),
        Mechanism("nystrom", {"landmarks": 17, "pinv_iterations": 40, "conv_kernel": 0}),
        Mechanism("performer", {"num_features": 16}),
        Mechanism("performer", {"num_features": 1024}),
    ])
    errors = {r["mechanism"]: r["mean_error"] for r in rows}
    assert errors["linformer(proj_len=16)"] < 1e-5
    assert errors["atrous(window_size=4, dilations=(1,))"] < 1e-5
    assert errors["nystrom(landmarks=17, pinv_iterations=40, conv_kernel=0)"] < 1e-3
    assert errors["performer(num_features=1024)"] < errors["performer(num_features=16)"]
    assert all(len(r["block_errors"]) == 2 and r["tokens"] == 17 and r["precision"] == "fp32" for r in rows)


def test_budget_that_does_not_fit_is_reported_not_raised():
    rows = block_errors(tiny_model("exact"), torch.randn(1, 3, 64, 64), [Mechanism("linformer", {"proj_len": 99})],
                        precisions=("fp32", "bf16"))
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert all("proj_len=99" in r["error"] for r in rows)


def test_reference_must_be_exact():
    with pytest.raises(ValueError, match="exact attention as the reference"):
        block_errors(tiny_model("performer"), torch.randn(1, 3, 64, 64), [])


def test_unknown_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown precision.*fp32, bf16"):
        block_errors(tiny_model("exact"), torch.randn(1, 3, 64, 64), [Mechanism("exact")], precisions=("fp8",))


def test_study_budgets_are_unchanged():
    """The study's table (16 x 16 training grid) lists these budgets in this order."""
    assert [m.label for m in default_mechanisms(16)] == [
        "linformer(proj_len=16)", "linformer(proj_len=64)", "linformer(proj_len=256)",
        "performer(num_features=64)", "performer(num_features=256)", "performer(num_features=1024)",
        "nystrom(landmarks=16, conv_kernel=0)", "nystrom(landmarks=32, conv_kernel=0)",
        "nystrom(landmarks=64, conv_kernel=0)", "nystrom(landmarks=128, conv_kernel=0)",
        "nystrom(landmarks=16, pinv_iterations=64, conv_kernel=0)",
        "nystrom(landmarks=64, pinv_iterations=64, conv_kernel=0)",
        "atrous(window_size=4, dilations=(1, 2, 3))", "atrous(window_size=4, dilations=pow2)",
        "atrous(window_size=8, dilations=(1, 2, 3))", "atrous(window_size=16, dilations=(1,))",
    ]


@pytest.mark.parametrize("grid", [4, 14, 16, 32])
def test_budgets_are_each_classes_error_budgets_in_display_order(grid):
    ranked = sorted(ATTENTIONS, key=lambda name: ATTENTIONS[name].display_rank)
    expected = [(name, budget) for name in ranked for budget in ATTENTIONS[name].error_budgets(grid)]
    got = [(m.attention, m.kwargs) for m in default_mechanisms(grid)]
    assert got == [pair for i, pair in enumerate(expected) if pair not in expected[:i]]  # a repeat listed once
    assert ("linformer", {"proj_len": grid * grid}) in got and ("atrous", {"window_size": grid, "dilations": (1,)}) in got


def test_a_class_that_changes_its_facts_changes_the_table(monkeypatch):
    """The control: the table follows the class, not a copy of its values."""
    monkeypatch.setattr(PerformerAttention, "display_rank", -1)
    monkeypatch.setattr(PerformerAttention, "error_budgets", classmethod(lambda cls, grid: [{"num_features": grid + 1}]))
    labels = [m.label for m in default_mechanisms(16)]
    assert labels[0] == "performer(num_features=17)" and sum(label.startswith("performer") for label in labels) == 1


def test_bf16_rows_measure_bf16_rounding_against_float64():
    """fp32 exact attention is the float64 reference to fp32 rounding; under bf16 autocast it
    loses bf16 rounding (so the bf16 rows really run in bf16), and a mechanism at its exact limit
    loses the same; an approximation's bf16 error is its fp32 error plus at most that floor."""
    torch.manual_seed(0)
    rows = block_errors(tiny_model("exact"), torch.randn(2, 3, 64, 64), [
        Mechanism("exact"), Mechanism("linformer", {"proj_len": 16}), Mechanism("performer", {"num_features": 16}),
    ], precisions=("fp32", "bf16"))
    error = {(r["mechanism"], r["precision"]): r["mean_error"] for r in rows}
    floor = error[("exact", "bf16")]
    assert error[("exact", "fp32")] < 1e-6
    assert 1e-4 < floor < 2e-2  # bf16 keeps 8 significant bits: ~4e-3 relative per rounding
    assert error[("linformer(proj_len=16)", "bf16")] == pytest.approx(floor, rel=0.5)
    approx_fp32, approx_bf16 = error[("performer(num_features=16)", "fp32")], error[("performer(num_features=16)", "bf16")]
    assert approx_fp32 > 10 * floor and abs(approx_bf16 - approx_fp32) <= floor
    assert_tables_parse(render_table(rows, "tiny", "pytest", {}))
    assert "| exact | bf16 |" in render_table(rows, "tiny", "pytest", {})


def test_mechanism_classes_can_come_from_another_registry():
    """`attentions` chooses the classes measured (another checkout's, for before/after tables)."""
    rows = block_errors(tiny_model("exact"), torch.randn(1, 3, 64, 64), [Mechanism("performer", {})],
                        attentions={"performer": ExactAttention})
    assert rows[0]["mean_error"] < 1e-6
