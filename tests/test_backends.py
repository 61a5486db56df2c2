"""The backends package: one record per runtime, no dependency on the build stage, thread policy."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_tiny_run
from effvit_deploy import ATTENTIONS, backends
from effvit_deploy.backends import BACKENDS, BackendUnavailable, ThreadPolicy, backend_status, load_runner

PACKAGE = Path(backends.__file__).parent
GPU_BACKENDS = [name for name, b in BACKENDS.items() if b.device == "cuda"]


def _imports(path: Path) -> list[str]:
    """Absolute names of the effvit_deploy modules a file imports (relative imports resolved)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = "effvit_deploy.backends" if node.level == 1 else "effvit_deploy" if node.level == 2 else ""
            module = f"{base}.{node.module}" if base and node.module else base or node.module or ""
            names += [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def test_no_backends_module_imports_the_export_stage():
    offenders = {p.name: n for p in PACKAGE.glob("*.py") for n in _imports(p) if n.startswith("effvit_deploy.export")}
    assert not offenders, f"backends/ must not import export/: {offenders}"


@pytest.mark.slow
def test_backends_import_alone_without_loading_export():
    """Importing the backends package pulls in no export module: no import circle is possible."""
    code = "import sys, effvit_deploy.backends; print([m for m in sys.modules if m.startswith('effvit_deploy.export')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_every_record_is_complete_and_named_by_its_key():
    for name, record in BACKENDS.items():
        assert record.name == name
        assert record.device in ("cpu", "cuda", "auto")
        assert record.precisions and "fp32" in record.precisions
        assert callable(record.load) and record.summary


@pytest.mark.parametrize("name", list(BACKENDS))
def test_each_record_reports_availability(name):
    reason = backend_status(name)
    assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
@pytest.mark.parametrize("name", GPU_BACKENDS)
def test_gpu_backends_say_why_they_cannot_run_on_cpu(name, tmp_path):
    reason = backend_status(name)
    assert reason and ("not installed" in reason or "no " in reason or "CUDA" in reason)
    with pytest.raises(BackendUnavailable, match=name):
        load_runner(tmp_path, name)


def test_cpu_backends_are_available_here():
    for name in ("torch", "onnxruntime", "openvino"):
        assert backend_status(name) is None, f"{name}: {backend_status(name)}"


def test_unknown_backend_and_precision_name_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="valid: torch"):
        backend_status("tflite")
    with pytest.raises(ValueError, match="no int8 precision"):
        load_runner(tmp_path, "torch", "int8")


def test_device_rule_comes_from_the_record():
    assert backends.backend_device("onnxruntime") == "cpu"
    assert backends.backend_device("openvino") == "cpu"
    assert backends.backend_device("tensorrt") == "cuda"
    assert backends.backend_device("torch") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_passive_policy_turns_onnxruntime_spinning_off(tmp_path, monkeypatch):
    import onnxruntime as ort

    seen = {}
    real = ort.InferenceSession

    def spy(path, options, providers):
        seen["spin"] = options.get_session_config_entry("session.intra_op.allow_spinning")
        seen["threads"] = options.intra_op_num_threads
        return real(path, options, providers=providers)

    from onnx import TensorProto, helper
    import onnx

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    path = tmp_path / "relu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    monkeypatch.setattr(ort, "InferenceSession", spy)
    backends.ort_session(path, policy=ThreadPolicy(threads=1, passive=True))
    assert seen == {"spin": "0", "threads": 1}


def test_torch_runner_records_its_thread_settings(tmp_path):
    runner = load_runner(make_tiny_run(tmp_path / "run", "exact"), "torch")
    assert runner.threads["threads"] == torch.get_num_threads() and runner.threads["passive"] is False
    assert runner(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 10)


def test_torch_tensorrt_and_layer_benchmark_share_the_dtype_table():
    layer = importlib.import_module("effvit_deploy.bench.layer")
    assert "torch_runner" in vars(layer)  # the layer benchmark runs modules through the torch backend's runner
    assert "TORCH_DTYPES" in vars(importlib.import_module("effvit_deploy.backends.pytorch"))
    for path in [*PACKAGE.parent.joinpath("export").glob("*.py"), *PACKAGE.parent.joinpath("bench").glob("*.py")]:
        assert '"bf16": torch.bfloat16' not in path.read_text(), f"{path.name} repeats the precision -> dtype table"


@pytest.mark.slow
@pytest.mark.parametrize("attention", sorted(ATTENTIONS))
def test_torch_compile_backend_runs_every_mechanism_like_eager_at_two_sizes(attention, tmp_path):
    """The torch-compile backend as shipped (inductor, dynamic shapes) on the CPU: graph capture
    alone passed while inductor's code generation refused atrous's window indices (its
    bounds analysis of truncating division), so the compiled model is run here, at the
    trained size and at a larger one (a second, padded patch grid)."""
    torch._dynamo.reset()
    run = make_tiny_run(tmp_path / "run", attention)
    eager, compiled = load_runner(run, "torch"), load_runner(run, "torch-compile")
    for px in (64, 96):
        x = np.random.default_rng(px).standard_normal((2, 3, px, px)).astype(np.float32)
        np.testing.assert_allclose(compiled(x), eager(x), atol=1e-4, rtol=1e-4)
