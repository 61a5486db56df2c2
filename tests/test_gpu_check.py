"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check's own code path, end to end on CPU at tiny sizes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from effvit_deploy.bench.results import load_results

REPO = Path(__file__).resolve().parents[1]
KINDS = ("infer-b64-bf16", "train-b64-bf16", "infer-b1-bf16", "infer-b1-cudagraphs", "infer-b64-fp32", "summary")


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run checks the CPU refusal of CUDA graphs")
def test_cpu_smoke_runs_every_step_and_packs_one_results_folder(tmp_path):
    out, results = tmp_path / "out", tmp_path / "gpu-check"
    env = {**os.environ, "OUT": str(out), "RESULTS": str(results), "GIT_COMMIT": "abc123",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"], env=env, capture_output=True,
                          text=True, timeout=300)
    log = (out / "summary.txt").read_text()
    assert done.returncode == 0, log
    for kind in KINDS:
        assert f"== {kind}: exit 0" in log, log

    infer = load_results(results / "results.jsonl")
    measured = {(r["attention"], r["backend"], r["precision"], r["batch"]) for r in infer if r["status"] == "ok"}
    for att in ("exact", "linformer", "performer", "nystrom", "atrous", "attention-free"):
        assert {(att, "torch", "bf16", 4), (att, "torch", "bf16", 1), (att, "torch", "fp32", 4)} <= measured, att
    refused = [r for r in infer if r["backend"] == "torch-compile-cudagraphs"]
    assert len(refused) == 6 and all(r["status"] == "skipped" and "CUDA graphs need an NVIDIA GPU" in r["reason"]
                                     for r in refused)
    train = load_results(results / "train_step.jsonl")
    assert len(train) == 12 and all(r["status"] == "ok" and r["epoch_images"] == 126_689 for r in train)

    summary = (results / "summary.md").read_text()
    assert summary.startswith("# CPU smoke run of the GPU check (toy model, not a GPU figure)")
    for text in ("git commit measured: abc123", "benchmarks/gpu_check.sh --cpu-smoke", "latency / attention-free bound",
                 "memory / exact's", "## Training step", "bound / exact (the bound is a bound)"):
        assert text in summary, text
    data = json.loads((results / "summary.json").read_text())
    ratios = data["inference"]["torch, bf16, batch 4"]
    assert set(ratios) == {"exact", "linformer", "performer", "nystrom", "atrous", "attention-free"}
    assert all(cell["over_bound"] == pytest.approx(1.0) for cell in ratios["attention-free"].values())

    with tarfile.open(out / "results.tgz") as tar:
        names = tar.getnames()
    assert {"gpu-check/summary.md", "gpu-check/results.jsonl", "gpu-check/train_step.jsonl"} <= set(names)
    assert not any("/cache" in n for n in names), "model caches stay out of the archive"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the full check would run")
def test_without_a_gpu_the_full_check_refuses_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "infer-b64-bf16", "--out",
                           str(tmp_path)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)
    assert done.returncode == 3 and done.stderr.strip().count("\n") == 0 and "--cpu-smoke" in done.stderr
