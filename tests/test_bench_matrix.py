"""The benchmark sweep on tiny runs: results file, report, skipped backends, OOM and timeouts."""
from __future__ import annotations

import csv
import json
import re

import pytest
import torch

from effvit_deploy.backends import backend_status, load_runner
from effvit_deploy.bench import run_benchmark, write_report
from effvit_deploy.bench.accuracy import NOT_APPLICABLE
from effvit_deploy.bench.matrix import resolve_backends
from effvit_deploy.bench.results import load_results
from effvit_deploy.bench.shapes import shape_run
from effvit_deploy.bench.worker import classify_error
from effvit_deploy.export import export_run

from conftest import make_tiny_run

FAST = {"warmup": 1, "repeats": 3, "progress": False, "bound": False}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny exact and performer runs, exported to ONNX for 32-64 px."""
    root = tmp_path_factory.mktemp("bench-runs")
    out = []
    for attention in ("exact", "performer"):
        run = make_tiny_run(root / attention, attention)
        export_run(run, formats=("onnx",), precisions=("fp32",), min_res=32, max_res=64, verify=False)
        out.append(run)
    return out


@pytest.mark.slow
def test_sweep_over_two_backends_and_two_resolutions_writes_results_and_report(runs, tmp_path):
    out = tmp_path / "bench"
    path = run_benchmark(runs, ["torch", "onnxruntime"], [32, 64], [1], ["fp32"], out,
                         accuracy_limit=16, **{**FAST, "bound": True})
    rows = load_results(path)
    assert len(rows) == 12
    assert {(r["attention"], r["backend"], r["resolution"]) for r in rows} == {
        (a, b, res) for a in ("exact", "performer", "attention-free") for b in ("torch", "onnxruntime") for res in (32, 64)}
    bound = [r for r in rows if r["attention"] == "attention-free"]
    assert all(r["status"] == "ok" and r["top1"] is None and "latency reference" in r["top1_source"] for r in bound)
    assert {(r["run"], r["implementation"]) for r in bound} == {
        ("exact-attention-free", "torch: PyTorch module (eager)"), ("exact-attention-free", "onnxruntime: model.onnx")}, \
        "the exact run's bound, run like any run: its weights in PyTorch, its exported graph in ONNX Runtime"
    exact_gflops = {r["resolution"]: r["gflops"] for r in rows if r["attention"] == "exact"}
    assert all(0 < r["gflops"] < exact_gflops[r["resolution"]] for r in bound)
    rows = [r for r in rows if r["attention"] != "attention-free"]
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert 0 < r["latency_median_ms"] <= r["latency_p90_ms"] <= r["latency_p99_ms"]
        assert r["throughput_ips"] == pytest.approx(1e3 / r["latency_median_ms"])
        assert r["tokens"] == 1 + (r["resolution"] // 16) ** 2
        assert r["gflops"] > 0 and r["params"] > 0
        assert r["peak_mem_bytes"] > 0 and r["mem_method"] == "cpu-rss-peak"
        assert 0.0 <= r["top1"] <= 1.0 and r["top1_source"] == "measured on this backend"
        assert r["top1_resolution"] == r["resolution"] and r["top1_images"] == 16
        assert r["thread_policy"] == "default" and r["omp_wait_policy"]
        assert r["implementation"] == ("torch: PyTorch module (eager)" if r["backend"] == "torch"
                                       else "onnxruntime: model.onnx")
        assert r["env"]["cpu_model"] and r["env"]["torch"] == torch.__version__.split("+")[0]
        assert "hostname" not in json.dumps(r["env"]).lower()
    by = {(r["attention"], r["backend"], r["resolution"]): r for r in rows}
    assert by[("exact", "torch", 64)]["gflops"] > by[("exact", "torch", 32)]["gflops"]
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 12 and {"latency_p99_ms", "peak_mem_bytes", "env_cpu_model", "env_git_commit"} <= set(table[0])

    report = write_report(path, out)
    text = report.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert {"latency_vs_tokens.png", "memory_vs_tokens.png", "speedup_vs_tokens.png", "accuracy_vs_latency.png"} <= set(images)
    for name in images:
        data = (out / name).read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(images)
    assert "Crossover" in text and "Recommendations" in text
    assert "largest possible" in text and "issue" not in text.lower() and "target" not in text.lower()


@pytest.mark.slow
def test_rows_are_appended_across_sweeps(runs, tmp_path):
    for res in (32, 48):
        run_benchmark(runs[:1], ["torch"], [res], [1], ["fp32"], tmp_path, accuracy=False, isolate=False, **FAST)
    rows = load_results(tmp_path / "results.jsonl")
    assert [r["resolution"] for r in rows] == [32, 48]
    assert rows[0]["top1_source"].startswith("training summary")


@pytest.mark.slow
@pytest.mark.skipif(backend_status("tensorrt") is None, reason="TensorRT is usable here: nothing is skipped")
def test_missing_backend_is_skipped_with_its_reason(runs, tmp_path):
    path = run_benchmark(runs[:1], ["torch", "tensorrt"], [32], [1], ["fp32"], tmp_path, accuracy=False,
                         isolate=False, **FAST)
    rows = load_results(path)
    skipped = [r for r in rows if r["backend"] == "tensorrt"]
    assert len(skipped) == 1 and skipped[0]["status"] == "skipped"
    assert "tensorrt" in skipped[0]["reason"] and "install" in skipped[0]["reason"]
    assert [r["status"] for r in rows if r["backend"] == "torch"] == ["ok"]
    _, reasons = resolve_backends("auto")
    assert "tensorrt" in reasons and reasons["tensorrt"]
    assert "report.md" in str(write_report(path, tmp_path))


@pytest.mark.slow
def test_missing_artifact_is_skipped_with_the_export_command(tmp_path):
    run = make_tiny_run(tmp_path / "unexported", "exact")
    rows = load_results(run_benchmark([run], ["onnxruntime"], [32], [1], ["fp32"], tmp_path / "out",
                                      accuracy=False, isolate=False, **FAST))
    assert rows[0]["status"] == "skipped" and "effvit-export" in rows[0]["reason"]


@pytest.mark.slow
def test_out_of_memory_is_recorded_and_the_sweep_continues(runs, tmp_path):
    def runner_factory(config):
        if config["resolution"] == 48 and "exact" in config["run_dir"]:
            raise torch.OutOfMemoryError("simulated: could not allocate 64 GiB")
        return load_runner(config["run_dir"], config["backend"], config["precision"])

    path = run_benchmark(runs, ["torch"], [32, 48, 64], [1], ["fp32"], tmp_path, accuracy=False,
                         isolate=False, runner_factory=runner_factory, **FAST)
    status = {(r["attention"], r["resolution"]): (r["status"], r["reason"]) for r in load_results(path)}
    assert status[("exact", 32)][0] == "ok"
    assert status[("exact", 48)][0] == "oom" and "simulated" in status[("exact", 48)][1]
    assert status[("exact", 64)] == ("skipped", "not run: oom at 48 px")
    assert all(status[("performer", r)][0] == "ok" for r in (32, 48, 64))


@pytest.mark.parametrize("exc, status", [
    (MemoryError(), "oom"), (RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for 1 GB"), "oom"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "oom"),
    (FileNotFoundError("no onnx artifact"), "skipped"), (ValueError("shape mismatch"), "error"),
])
def test_errors_are_classified(exc, status):
    assert classify_error(exc) == status


@pytest.mark.slow
@pytest.mark.parametrize("limits, status", [({"memory_cap_bytes": 1}, "oom"), ({"timeout_s": 0.0}, "timeout")])
def test_isolated_configuration_past_its_limit_is_killed_and_recorded(runs, tmp_path, limits, status):
    path = run_benchmark(runs[:1], ["torch"], [32, 64], [1], ["fp32"], tmp_path, accuracy=False, **limits, **FAST)
    rows = load_results(path)
    assert rows[0]["status"] == status and rows[0]["reason"]
    assert rows[1]["status"] == "skipped" and rows[1]["reason"] == f"not run: {status} at 32 px"


@pytest.mark.slow
def test_shape_only_run_reports_accuracy_as_not_applicable(tmp_path):
    run = shape_run("vit_tiny_patch16_224", "linformer", tmp_path / "cache")
    rows = load_results(run_benchmark([run], ["torch"], [32], [1], ["fp32"], tmp_path, isolate=False, **FAST))
    assert rows[0]["status"] == "ok"
    assert rows[0]["top1"] is None and rows[0]["top1_source"] == NOT_APPLICABLE
    assert shape_run("vit_tiny_patch16_224", "linformer", tmp_path / "cache") == run


@pytest.mark.slow
def test_bad_matrix_is_refused_with_the_fix(runs, tmp_path):
    with pytest.raises(ValueError, match="multiples of .* patch size 16"):
        run_benchmark(runs[:1], ["torch"], [30], [1], ["fp32"], tmp_path)
    with pytest.raises(ValueError, match="unknown backend"):
        run_benchmark(runs[:1], ["tensorflow"], [32], [1], ["fp32"], tmp_path)


def test_shape_and_bound_runs_are_exported_for_the_formats_the_backends_read():
    from effvit_deploy.bench.matrix import artifact_formats

    assert artifact_formats(["torch", "torch-compile"]) == ()
    assert artifact_formats(["torch", "onnxruntime"]) == ("onnx",)
    assert artifact_formats(["openvino"]) == ("onnx", "openvino"), "the IR is converted from the ONNX graph"
    assert artifact_formats(["onnxruntime-cuda", "tensorrt"]) == ("onnx",)
