"""The approximation-error harness: exact limits give zero error, budgets order the errors."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from effvit_deploy.approximation import Mechanism, block_errors


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
    assert all(len(r["block_errors"]) == 2 and r["tokens"] == 17 for r in rows)


def test_budget_that_does_not_fit_is_reported_not_raised():
    rows = block_errors(tiny_model("exact"), torch.randn(1, 3, 64, 64), [Mechanism("linformer", {"proj_len": 99})])
    assert "proj_len=99" in rows[0]["error"]


def test_reference_must_be_exact():
    with pytest.raises(ValueError, match="exact attention as the reference"):
        block_errors(tiny_model("performer"), torch.randn(1, 3, 64, 64), [])
