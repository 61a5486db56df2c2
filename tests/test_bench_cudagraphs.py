"""The torch-compile-cudagraphs backend: CUDA graphs for batch-1 latency, refused on CPU in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import make_tiny_run, tiny_model
from effvit_deploy.backends import BACKENDS, BackendUnavailable, load_runner
from effvit_deploy.backends.pytorch import CUDAGRAPHS, COMPILE_OPTIONS, inference_forward
from effvit_deploy.bench.layer import LAYER_BACKENDS, module_runner
from effvit_deploy.cli.bench import main


def test_cudagraphs_is_a_backend_of_runs_layers_and_the_bound_with_reduce_overhead():
    assert BACKENDS[CUDAGRAPHS].device == "cuda" and CUDAGRAPHS in LAYER_BACKENDS
    assert COMPILE_OPTIONS[CUDAGRAPHS] == {"mode": "reduce-overhead", "dynamic": False}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cudagraphs_on_cpu_is_refused_with_the_fix(tmp_path):
    with pytest.raises(BackendUnavailable, match="CUDA graphs need an NVIDIA GPU.*use torch-compile on CPU"):
        module_runner(tiny_model("exact"), CUDAGRAPHS, "fp32")
    with pytest.raises(BackendUnavailable, match="runs on CUDA only"):
        inference_forward(tiny_model("exact"), CUDAGRAPHS, "cpu")
    with pytest.raises(BackendUnavailable, match=CUDAGRAPHS):
        load_runner(make_tiny_run(tmp_path / "run", "exact"), CUDAGRAPHS)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_effvit_bench_with_cudagraphs_on_cpu_exits_3_in_one_line_before_any_work(tmp_path, capsys):
    """A named backend that cannot run here is a missing runtime (exit 3), refused before anything
    is measured or written."""
    out = tmp_path / "out"
    rc = main(["--layer-only", "--attention", "exact", "--dim", "64", "--heads", "2", "--resolutions", "64",
               "--backends", CUDAGRAPHS, "--out", str(out), "--no-progress"])
    assert rc == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "CUDA graphs need an NVIDIA GPU" in err and "use torch-compile on CPU" in err
    assert not (out / "results.jsonl").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cudagraphs_replays_give_eager_logits_for_new_inputs():
    model = tiny_model("nystrom").cuda()
    runner = module_runner(model, CUDAGRAPHS, "fp32")
    eager = module_runner(model, "torch", "fp32")
    for seed in range(3):  # later calls replay the graph on new data
        x = np.random.default_rng(seed).standard_normal((1, 3, 64, 64), dtype=np.float32)
        np.testing.assert_allclose(runner(x), eager(x), atol=1e-3, rtol=1e-3)
