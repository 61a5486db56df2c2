"""Inference backends behind one interface, used by export verification, the benchmark and the demo.

A `Runner` executes one model artifact: `prepare` moves a float32 NCHW numpy batch to the
backend's native input (outside any timed region), `run` executes, `synchronize` waits for the
device, `to_numpy` brings logits back. Backends and where their artifact comes from:

    torch                 run_dir/checkpoints/best.safetensors, eager PyTorch
    torch-compile         the same, through torch.compile
    onnxruntime           export/manifest.json "onnx" artifact, CPU execution provider
    onnxruntime-cuda      the same, CUDA execution provider (onnxruntime-gpu)
    onnxruntime-tensorrt  the same, TensorRT execution provider, CUDA as fallback
    tensorrt              a serialised TensorRT engine ("tensorrt" artifact)
    torch-tensorrt        a Torch-TensorRT exported program ("torch-tensorrt" artifact)

GPU packages are imported lazily; `backend_status` says why a backend cannot run here.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch

from .runs import ModelCard, load_model_card, load_run

BACKENDS = (
    "torch",
    "torch-compile",
    "onnxruntime",
    "onnxruntime-cuda",
    "onnxruntime-tensorrt",
    "tensorrt",
    "torch-tensorrt",
)
MANIFEST = "manifest.json"
GPU_INSTALL_HINT = "install the GPU runtime on an NVIDIA machine: pip install 'effvit-deploy[gpu]'"


class BackendUnavailable(RuntimeError):
    """A backend cannot run on this machine; the message says why and how to fix it."""


def import_gpu_package(module: str, label: str) -> Any:
    """Import a GPU-only package lazily, or raise BackendUnavailable saying what is missing."""
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailable(f"{label} is not installed ({exc}): {GPU_INSTALL_HINT}") from None
    if not torch.cuda.is_available():
        raise BackendUnavailable(f"{label} needs an NVIDIA GPU and none is visible (torch.cuda.is_available() is False)")
    return package


def _ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return ort.get_available_providers()


def backend_status(name: str) -> Optional[str]:
    """None when `name` can run here, otherwise the reason it cannot."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available()
    if name in ("torch", "torch-compile"):
        return None
    if name == "onnxruntime":
        return None if "CPUExecutionProvider" in _ort_providers() else "onnxruntime is not installed: pip install 'effvit-deploy[cpu]'"
    if name == "onnxruntime-cuda":
        if "CUDAExecutionProvider" not in _ort_providers():
            return f"onnxruntime has no CUDA execution provider: {GPU_INSTALL_HINT}"
        return None if cuda else "no CUDA device"
    if name == "onnxruntime-tensorrt":
        if "TensorrtExecutionProvider" not in _ort_providers():
            return f"onnxruntime has no TensorRT execution provider: {GPU_INSTALL_HINT}"
        return None if cuda else "no CUDA device"
    package = {"tensorrt": "tensorrt", "torch-tensorrt": "torch_tensorrt"}[name]
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed: {GPU_INSTALL_HINT}"
    return None if cuda else "no CUDA device"


def available_backends() -> dict[str, Optional[str]]:
    """Every backend with None (usable) or the reason it is skipped."""
    return {name: backend_status(name) for name in BACKENDS}


def load_manifest(run_dir: Union[str, Path]) -> dict[str, Any]:
    path = Path(run_dir) / "export" / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no exported artifacts ({path} missing): run `effvit-export {run_dir}` first")
    return json.loads(path.read_text())


def find_artifact(run_dir: Union[str, Path], fmt: str, precision: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """(absolute path, manifest entry) of the artifact of this format and precision."""
    manifest = load_manifest(run_dir)
    for entry in manifest.get("artifacts", []):
        if entry["format"] == fmt and entry["precision"] == precision:
            return Path(run_dir) / "export" / entry["path"], entry
    have = ", ".join(f"{e['format']}/{e['precision']}" for e in manifest.get("artifacts", [])) or "none"
    raise FileNotFoundError(
        f"{run_dir} has no {fmt} {precision} artifact (have: {have}); "
        f"run `effvit-export {run_dir} --formats {fmt} --precision {precision}`"
    )


@dataclass
class Runner:
    """One loaded artifact on one backend."""

    backend: str
    precision: str
    device: str
    card: ModelCard
    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray]
    synchronize: Callable[[], None]
    artifact: Optional[Path] = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> float32 logits [B, classes]."""
        out = self.run(self.prepare(batch))
        self.synchronize()
        return self.to_numpy(out).astype(np.float32, copy=False)


def _sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _torch_runner(run_dir, backend: str, precision: str, device: str) -> Runner:
    model, card = load_run(run_dir)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = model.to(device=device, dtype=dtype)
    forward = torch.compile(model, dynamic=True) if backend == "torch-compile" else model

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return forward(x)

    return Runner(
        backend, precision, device, card,
        prepare=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device=device, dtype=dtype),
        run=run,
        to_numpy=lambda y: y.float().cpu().numpy(),
        synchronize=_sync(device),
    )


def ort_session(path: Union[str, Path], providers: Sequence[Any] = ("CPUExecutionProvider",),
                spin_wait: bool = True, quiet: bool = False):
    """An ONNX Runtime session; `spin_wait=False` makes idle intra-op threads wait passively."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if quiet:
        options.log_severity_level = 3
    if not spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers))


def _ort_runner(run_dir, backend: str, precision: str, device: str, spin_wait: bool) -> Runner:
    path, entry = find_artifact(run_dir, "onnx", precision)
    providers: list[Any] = ["CPUExecutionProvider"]
    if backend == "onnxruntime-cuda":
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    elif backend == "onnxruntime-tensorrt":
        from .export.tensorrt import ort_tensorrt_provider_options

        providers = [
            ("TensorrtExecutionProvider", ort_tensorrt_provider_options(path, entry)),
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ]
    session = ort_session(path, providers, spin_wait)
    input_name = session.get_inputs()[0].name
    input_type = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    card = load_model_card(run_dir)
    return Runner(
        backend, precision, device, card,
        prepare=lambda b: {input_name: np.ascontiguousarray(b, dtype=input_type)},
        run=lambda feed: session.run(None, feed)[0],
        to_numpy=lambda y: np.asarray(y),
        synchronize=lambda: None,
        artifact=path,
    )


def load_runner(
    run_dir: Union[str, Path],
    backend: str = "torch",
    precision: str = "fp32",
    device: Optional[str] = None,
    spin_wait: bool = True,
) -> Runner:
    """Load the run's artifact for `backend`; raises BackendUnavailable with the reason.

    `spin_wait=False` makes ONNX Runtime's idle threads wait passively instead of spinning
    (onnxruntime docs, "Thread management"): on a machine shared with other jobs a spinning
    thread holds a core the next operator needs (ViT-S/16 at 224 px measured 5-6x slower here).
    """
    reason = backend_status(backend)
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {reason}")
    gpu_backend = backend not in ("torch", "torch-compile", "onnxruntime")
    device = device or ("cuda" if gpu_backend or torch.cuda.is_available() else "cpu")
    if backend in ("torch", "torch-compile"):
        return _torch_runner(run_dir, backend, precision, device)
    if backend.startswith("onnxruntime"):
        return _ort_runner(run_dir, backend, precision, "cpu" if backend == "onnxruntime" else "cuda", spin_wait)
    if backend == "tensorrt":
        from .export.tensorrt import load_engine_runner

        path, entry = find_artifact(run_dir, "tensorrt", precision)
        return load_engine_runner(path, entry, load_model_card(run_dir), precision)
    from .export.torch_tensorrt import load_torch_tensorrt_runner

    path, entry = find_artifact(run_dir, "torch-tensorrt", precision)
    return load_torch_tensorrt_runner(path, entry, load_model_card(run_dir), precision)
