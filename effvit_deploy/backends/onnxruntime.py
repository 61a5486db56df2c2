"""ONNX Runtime on the exported ONNX graph: CPU, CUDA and TensorRT execution providers.

Thread policy (onnxruntime docs, "Thread management"): `intra_op_num_threads` and
`session.intra_op.allow_spinning`; left unset, ONNX Runtime uses one thread per physical core
and spinning threads.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from ..runs import load_model_card
from .base import (CPU_INSTALL_HINT, GPU_INSTALL_HINT, RUNTIME_DEFAULT, Backend, Runner, ThreadPolicy,
                   find_artifact, profile_shapes)

INPUT_NAME = "pixel_values"


def available_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return ort.get_available_providers()


def ort_session(path: Union[str, Path], providers: Sequence[Any] = ("CPUExecutionProvider",),
                policy: ThreadPolicy = RUNTIME_DEFAULT, quiet: bool = False):
    """An ONNX Runtime session under `policy` (passive: idle intra-op threads do not spin)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if policy.threads is not None:
        options.intra_op_num_threads = policy.threads
    if policy.passive:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers))


def tensorrt_provider_options(onnx_path: Union[str, Path], entry: dict[str, Any]) -> dict[str, Any]:
    """TensorrtExecutionProvider options for an exported graph.

    Every dynamic dimension gets a min/opt/max profile (batch, height, width), and the engine and
    timing caches live next to the graph: a second session with the same options reuses the
    engine instead of rebuilding it (the provider rebuilds when any option differs).
    """
    cache = Path(onnx_path).parent / "ort_trt_cache"
    cache.mkdir(parents=True, exist_ok=True)
    shapes = [f"{INPUT_NAME}:{b}x{c}x{h}x{w}" for b, c, h, w in profile_shapes(entry["inputs"])]
    return {
        "trt_profile_min_shapes": shapes[0],
        "trt_profile_opt_shapes": shapes[1],
        "trt_profile_max_shapes": shapes[2],
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": entry["precision"] == "fp16",
    }


def session_runner(session, backend: str, precision: str, device: str, card, artifact: Optional[Path],
                   threads: dict[str, Any]) -> Runner:
    """A Runner over an open session (float32 or float16 input, first output as logits)."""
    first = session.get_inputs()[0]
    input_type = np.float16 if first.type == "tensor(float16)" else np.float32
    return Runner(
        backend, precision, device, card,
        prepare=lambda b: {first.name: np.ascontiguousarray(b, dtype=input_type)},
        run=lambda feed: session.run(None, feed)[0],
        to_numpy=np.asarray,
        synchronize=lambda: None,
        artifact=artifact,
        threads=threads,
    )


def _status(provider: str, cuda: bool):
    def status() -> Optional[str]:
        if provider not in available_providers():
            if not cuda:
                return f"onnxruntime is not installed: {CPU_INSTALL_HINT}"
            return f"onnxruntime has no {provider}: {GPU_INSTALL_HINT}"
        import torch

        return None if not cuda or torch.cuda.is_available() else "no CUDA device visible"

    return status


def _open(backend: str, quiet: bool = True):
    def open_artifact(path: Path, entry: dict[str, Any], card, policy: ThreadPolicy) -> Runner:
        providers: list[Any] = ["CPUExecutionProvider"]
        if backend == "onnxruntime-cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        elif backend == "onnxruntime-tensorrt":
            providers = [("TensorrtExecutionProvider", tensorrt_provider_options(path, entry)),
                         "CUDAExecutionProvider", "CPUExecutionProvider"]
        session = ort_session(path, providers, policy, quiet)
        threads = {"threads": policy.threads or "default (one per physical core)",
                   "spinning": not policy.passive, "passive": policy.passive}
        return session_runner(session, backend, entry["precision"], "cpu" if backend == "onnxruntime" else "cuda",
                              card, Path(path), threads)

    return open_artifact


def _load(backend: str):
    def load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
        path, entry = find_artifact(run_dir, "onnx", precision)
        runner = _open(backend, quiet=False)(path, entry, load_model_card(run_dir), policy)
        runner.device = device
        return runner

    return load


ONNX_PRECISIONS = ("fp32", "fp16", "int8", "int8-static")
ONNXRUNTIME = Backend("onnxruntime", "onnx", "cpu", ONNX_PRECISIONS, _status("CPUExecutionProvider", False),
                      _load("onnxruntime"), "ONNX Runtime, CPU execution provider", _open("onnxruntime"))
ONNXRUNTIME_CUDA = Backend("onnxruntime-cuda", "onnx", "cuda", ("fp32", "fp16"), _status("CUDAExecutionProvider", True),
                           _load("onnxruntime-cuda"), "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)",
                           _open("onnxruntime-cuda"))
ONNXRUNTIME_TENSORRT = Backend("onnxruntime-tensorrt", "onnx", "cuda", ("fp32", "fp16"),
                               _status("TensorrtExecutionProvider", True), _load("onnxruntime-tensorrt"),
                               "ONNX Runtime, TensorRT execution provider with CUDA as fallback",
                               _open("onnxruntime-tensorrt"))
