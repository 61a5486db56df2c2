"""Running a model artifact: one module and one `Backend` record per runtime, and `load_runner`.

Export verification, the benchmark and the demo all run artifacts through here; the build stage
(`effvit_deploy.export`) imports this package, never the reverse.

    from effvit_deploy.backends import BACKENDS, ThreadPolicy, load_runner
    runner = load_runner("runs/digits-exact", "openvino", "fp32", policy=ThreadPolicy(passive=True))
    logits = runner(batch)          # float32 NCHW numpy -> float32 logits [B, classes]

Backends and what they run (`artifact`: the export manifest's format; none: the run's weights):

    torch                 checkpoints/best.safetensors, eager PyTorch (CUDA when visible)
    torch-compile         the same, through torch.compile
    torch-compile-cudagraphs  the same, compiled with mode="reduce-overhead" (CUDA graphs; CUDA only)
    onnxruntime           "onnx" artifact, CPU execution provider (fp32, fp16, int8, int8-static)
    onnxruntime-cuda      "onnx" artifact, CUDA execution provider (onnxruntime-gpu)
    onnxruntime-tensorrt  "onnx" artifact, TensorRT execution provider, CUDA as fallback
    openvino              "openvino" artifact (IR), OpenVINO CPU plugin (fp32, int8-static)
    tensorrt              "tensorrt" artifact, a serialised TensorRT engine
    torch-tensorrt        "torch-tensorrt" artifact, a Torch-TensorRT exported program

Every artifact is found through `find_artifact`, which refuses (ArtifactError) a path leaving the
export folder, a file whose SHA-256 differs from the manifest's, and an artifact built from
other weights than the run's current checkpoints/best.safetensors (stale).

Runtime packages are imported lazily; `backend_status(name)` says why one cannot run here.
A `ThreadPolicy` (threads, passive) is applied by each runtime in its own way and recorded in
`Runner.threads`; the default leaves every runtime's own default.

Adding a runtime:
  1. write `backends/<runtime>.py` with a loader `load(run_dir, precision, device, policy) ->
     Runner` (import the runtime inside it) and a `Backend(...)` record: name, artifact format,
     device, precisions, `status()` returning None or the reason with the fix, and, when it runs
     an artifact, `open(path, entry, card, policy) -> Runner` (the loader finds the artifact
     with `find_artifact` and calls it);
  2. add the record to `BACKENDS` below (the order is the order reports list them);
  3. if it needs its own artifact, write `export/<format>.py` with a builder and a `Format`
     record naming this backend (effvit_deploy/export/format.py) and add it to export's
     `FORMATS`: export verifies the artifact through this backend's `open`, and the format's
     precisions are this backend's.
  Bench, demo and export verification then find it through `BACKENDS`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from .base import (CPU_INSTALL_HINT, GPU_INSTALL_HINT, MANIFEST, RUNTIME_DEFAULT, TORCH_DTYPES, ArtifactError, Backend,
                   BackendUnavailable, Runner, ThreadPolicy, artifact_path, check_artifact, file_sha256, find_artifact,
                   import_gpu_package, load_manifest, profile_shapes)
from .onnxruntime import ONNXRUNTIME, ONNXRUNTIME_CUDA, ONNXRUNTIME_TENSORRT, ort_session
from .openvino import OPENVINO
from .pytorch import TORCH, TORCH_COMPILE, TORCH_COMPILE_CUDAGRAPHS
from .tensorrt import TENSORRT
from .torch_tensorrt import TORCH_TENSORRT

BACKENDS: dict[str, Backend] = {
    b.name: b for b in (TORCH, TORCH_COMPILE, TORCH_COMPILE_CUDAGRAPHS, ONNXRUNTIME, ONNXRUNTIME_CUDA, ONNXRUNTIME_TENSORRT, OPENVINO,
                        TENSORRT, TORCH_TENSORRT)
}


def get_backend(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def backend_status(name: str) -> Optional[str]:
    """None when `name` can run here, otherwise the reason it cannot."""
    return get_backend(name).status()


def available_backends() -> dict[str, Optional[str]]:
    """Every backend with None (usable) or the reason it is skipped."""
    return {name: backend.status() for name, backend in BACKENDS.items()}


def backend_device(name: str) -> str:
    """The device `load_runner` picks for `name`, known before loading (e.g. for a memory probe)."""
    return get_backend(name).default_device()


def load_runner(
    run_dir: Union[str, Path],
    backend: str = "torch",
    precision: str = "fp32",
    device: Optional[str] = None,
    policy: ThreadPolicy = RUNTIME_DEFAULT,
) -> Runner:
    """Load the run's artifact for `backend` at `precision`; raises BackendUnavailable with the
    reason when the runtime cannot run here, FileNotFoundError when the artifact is missing."""
    record = get_backend(backend)
    reason = record.status()
    if reason is not None:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {reason}")
    if precision not in record.precisions:
        raise ValueError(f"backend {backend!r} has no {precision} precision; valid: {', '.join(record.precisions)}")
    return record.load(Path(run_dir), precision, device or record.default_device(), policy)


__all__ = [
    "BACKENDS", "CPU_INSTALL_HINT", "GPU_INSTALL_HINT", "MANIFEST", "RUNTIME_DEFAULT", "TORCH_DTYPES", "ArtifactError",
    "Backend", "BackendUnavailable", "Runner", "ThreadPolicy", "artifact_path", "available_backends", "backend_device",
    "backend_status", "check_artifact", "file_sha256", "find_artifact", "get_backend", "import_gpu_package", "load_manifest", "load_runner", "ort_session",
    "profile_shapes",
]
