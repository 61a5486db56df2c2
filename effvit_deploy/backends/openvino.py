"""OpenVINO on CPU: the "openvino" artifact, an OpenVINO IR (model.xml + model.bin) converted
from the verified ONNX graph (OpenVINO docs, "Model preparation" and "CPU device").

fp32 artifacts run with `INFERENCE_PRECISION_HINT=f32`: on CPUs with bf16/AMX support the CPU
plugin otherwise computes in bf16 by default, which is a different precision from the one the
artifact claims. An int8 artifact is converted from an ONNX graph with QuantizeLinear /
DequantizeLinear pairs; OpenVINO's low-precision transformations run those parts in int8.
Thread policy: `INFERENCE_NUM_THREADS` when a count is given; OpenVINO's CPU threads block rather
than spin, so the passive option only turns thread pinning off (`ENABLE_CPU_PINNING`), which on
a shared host keeps a busy core from stalling a pinned thread.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..runs import ModelCard, load_model_card
from .base import CPU_INSTALL_HINT, RUNTIME_DEFAULT, Backend, Runner, ThreadPolicy, find_artifact

PRECISIONS = ("fp32", "int8-static")


def status() -> Optional[str]:
    if importlib.util.find_spec("openvino") is None:
        return f"openvino is not installed: {CPU_INSTALL_HINT}"
    return None


def compile_config(precision: str, policy: ThreadPolicy) -> dict[str, Any]:
    """CPU plugin properties for `precision` under `policy`."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if policy.threads is not None:
        config["INFERENCE_NUM_THREADS"] = int(policy.threads)
    if policy.passive:
        config["ENABLE_CPU_PINNING"] = False
    return config


def compiled_runner(model: Union[str, Path, Any], precision: str, card: Optional[ModelCard],
                    policy: ThreadPolicy = RUNTIME_DEFAULT, artifact: Optional[Path] = None) -> Runner:
    """A Runner over an OpenVINO model (IR/ONNX path or `ov.Model`) compiled for the CPU."""
    import openvino as ov

    core = ov.Core()
    config = compile_config(precision, policy)
    compiled = core.compile_model(str(model) if isinstance(model, Path) else model, "CPU", config)
    request = compiled.create_infer_request()
    threads = {"threads": compiled.get_property("INFERENCE_NUM_THREADS") or "default",
               "pinning": bool(compiled.get_property("ENABLE_CPU_PINNING")), "passive": policy.passive,
               "performance_hint": str(compiled.get_property("PERFORMANCE_HINT"))}

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return Runner(
        "openvino", precision, "cpu", card,
        prepare=lambda b: np.ascontiguousarray(b, dtype=np.float32),
        run=run, to_numpy=np.asarray, synchronize=lambda: None, artifact=artifact, threads=threads,
    )


def _open(path: Path, entry: dict[str, Any], card: Optional[ModelCard], policy: ThreadPolicy) -> Runner:
    return compiled_runner(Path(path), entry["precision"], card, policy, Path(path))


def _load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
    path, entry = find_artifact(run_dir, "openvino", precision)
    return _open(path, entry, load_model_card(run_dir), policy)


OPENVINO = Backend("openvino", "openvino", "cpu", PRECISIONS, status, _load,
                   "OpenVINO CPU plugin on the OpenVINO IR converted from the ONNX graph", _open)
