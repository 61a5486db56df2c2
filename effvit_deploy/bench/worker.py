"""Measure one benchmark configuration in the process that runs it.

The sweep (matrix.py) starts one fresh process per configuration (`measure_to_file`, forked
from a server that has only imported the libraries), so each peak-memory
figure is that configuration's alone, and a configuration that exhausts memory or hangs can be
killed without losing the sweep. `python -m effvit_deploy.bench.worker OUT.json < config.json`
runs one by hand. `measure` is the same code, callable in-process.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Optional

import numpy as np
import torch

from ..atomic import write_json
from ..backends import BackendUnavailable, Runner, ThreadPolicy, backend_device, load_runner
from .harness import latency_stats, time_runner
from .layer import layer_input, load_layer_runner
from .memory import memory_probe

OOM_MESSAGES = ("out of memory", "failed to allocate", "bad_alloc", "cannot allocate memory")


def classify_error(exc: BaseException) -> str:
    """'oom' for memory exhaustion (PyTorch, NumPy or ONNX Runtime wording), 'skipped' for a
    backend or artifact that is not there, else 'error'."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return "oom"
    if any(m in str(exc).lower() for m in OOM_MESSAGES):
        return "oom"
    if isinstance(exc, (BackendUnavailable, FileNotFoundError)):
        return "skipped"
    return "error"


THREAD_POLICIES = ("default", "passive")


def thread_policy_of(name: str) -> ThreadPolicy:
    """The backends' ThreadPolicy for a bench policy name: "default" leaves each runtime's own
    threads, "passive" makes idle threads sleep (for shared hosts)."""
    return ThreadPolicy(passive=name == "passive")


def implementation(runner: Runner) -> str:
    """What ran, for the results row: the artifact file a runtime executed (with the runtime's
    own graph optimisations: ONNX Runtime at its highest level, OpenVINO's CPU plugin fusions),
    or the PyTorch module (eager or compiled; exact attention through
    F.scaled_dot_product_attention's fused CPU kernel)."""
    if runner.artifact is not None:
        return f"{runner.backend}: {runner.artifact.name}"
    how = {"torch": "eager", "torch-compile": "torch.compile", "torch-compile-cudagraphs": "torch.compile, CUDA graphs"}
    return f"{runner.backend}: PyTorch module ({how.get(runner.backend, runner.backend)})"


def _model_runner(config: dict[str, Any]) -> Runner:
    """The run's artifact (or, for the PyTorch backends, its weights) on its backend."""
    return load_runner(config["run_dir"], config["backend"], config["precision"],
                       policy=thread_policy_of(config.get("thread_policy", "default")))


def measure(config: dict[str, Any], runner_factory: Optional[Callable[[dict], Runner]] = None) -> dict[str, Any]:
    """Load, warm up, time and measure memory for one configuration; never raises for a
    failing configuration: the result's `status` says ok / oom / skipped / error and why."""
    layer = config["mode"] == "layer"
    factory = runner_factory or (load_layer_runner if layer else _model_runner)
    batch, res = config["batch"], config["resolution"]
    probe = memory_probe(config["backend"], backend_device(config["backend"]))
    result: dict[str, Any] = {"mem_method": probe.method, "mem_note": probe.note, "threads": torch.get_num_threads(),
                              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "") or "runtime default",
                              "thread_policy": config.get("thread_policy", "default")}
    try:
        if config["backend"].startswith("torch-compile"):
            torch._dynamo.reset()  # in-process sweeps: a fresh compile, never dynamo's recompile limit (eager fallback)
        probe.before_load()
        runner = factory(config)
        result["runtime_threads"] = runner.threads
        result["implementation"] = implementation(runner)
        if layer:
            x = layer_input(batch, res, config["patch"], config["dim"])
        else:
            x = np.random.default_rng(0).standard_normal((batch, 3, res, res), dtype=np.float32)
        probe.before_run()
        samples = time_runner(
            runner, x, warmup=config["warmup"], repeats=config["repeats"],
            max_time_s=config.get("max_time_s"), min_repeats=config.get("min_repeats", 3),
        )
        result.update(latency_stats(samples, batch))
        result["peak_mem_bytes"] = probe.after_run()
        result["device"] = runner.device
        result["status"], result["reason"] = "ok", ""
    except Exception as exc:  # recorded, so the sweep goes on
        result["status"] = classify_error(exc)
        result["reason"] = f"{type(exc).__name__}: {exc}"[:500]
    return result


def measure_to_file(config: dict[str, Any], path: str) -> None:
    """Process target: measure and write the result atomically (the parent reads it back)."""
    write_json(path, measure(config))


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m effvit_deploy.bench.worker OUT.json < config.json", file=sys.stderr)
        return 2
    measure_to_file(json.load(sys.stdin), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
