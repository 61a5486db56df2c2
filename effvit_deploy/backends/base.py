"""What every runtime module shares: the `Runner`, the `Backend` record, the thread policy, the
precision -> dtype table, the TensorRT-style input profile and the export manifest lookup."""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ..runs import ModelCard

MANIFEST = "manifest.json"
CPU_INSTALL_HINT = "pip install 'effvit-deploy[cpu]'"
GPU_INSTALL_HINT = "install the GPU runtime on an NVIDIA machine: pip install 'effvit-deploy[gpu]'"
# The one precision -> torch dtype table (PyTorch runners, Torch-TensorRT, the layer benchmark).
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


@dataclass(frozen=True)
class ThreadPolicy:
    """How a runtime's CPU threads behave; the defaults leave each runtime's own default.

    `threads`: intra-op threads (None: the runtime's choice, usually one per physical core).
    `passive`: idle threads sleep instead of spinning. Spinning wins on a dedicated machine; on a
    shared one a preempted spinning thread stalls every barrier (ViT-S/16, 224 px, 2 threads,
    loaded 2-core machine: 5.6 s spinning vs 0.14 s passive in PyTorch). ONNX Runtime takes it per
    session (`session.intra_op.allow_spinning`); PyTorch's OpenMP reads `OMP_WAIT_POLICY` once at
    process start, so the process that will run PyTorch must be started with
    OMP_WAIT_POLICY=PASSIVE (the benchmark's worker processes are); OpenVINO's CPU plugin has no
    spin setting (its threads block).
    """

    threads: Optional[int] = None
    passive: bool = False


RUNTIME_DEFAULT = ThreadPolicy()


@dataclass
class Runner:
    """One loaded artifact on one backend.

    `prepare` moves a float32 NCHW numpy batch to the backend's native input (outside any timed
    region), `run` executes, `synchronize` waits for the device, `to_numpy` brings logits back.
    `threads` records the thread settings the runtime actually got (for results rows).
    """

    backend: str
    precision: str
    device: str
    card: Optional[ModelCard]
    prepare: Callable[[np.ndarray], Any]
    run: Callable[[Any], Any]
    to_numpy: Callable[[Any], np.ndarray]
    synchronize: Callable[[], None]
    artifact: Optional[Path] = None
    threads: dict[str, Any] = field(default_factory=dict)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """float32 NCHW batch -> float32 logits [B, classes]."""
        out = self.run(self.prepare(batch))
        self.synchronize()
        return self.to_numpy(out).astype(np.float32, copy=False)


Loader = Callable[[Path, str, str, ThreadPolicy], Runner]


@dataclass(frozen=True)
class Backend:
    """One runtime: what it runs, where, whether it can run here, and how to load a runner.

    `artifact` is the manifest format it reads (None: the run's own weights); `device` is "cpu",
    "cuda" or "auto" (CUDA when visible); `status()` is None when usable, else the reason and fix;
    `load(run_dir, precision, device, policy)` returns a Runner; `precisions` lists what it runs.
    """

    name: str
    artifact: Optional[str]
    device: str
    precisions: tuple[str, ...]
    status: Callable[[], Optional[str]]
    load: Loader
    summary: str

    def default_device(self) -> str:
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device


def profile_shapes(inputs: dict[str, list[int]]) -> list[tuple[int, int, int, int]]:
    """The manifest's min/opt/max batch, height, width as three NCHW shapes."""
    return [(inputs["batch"][i], 3, inputs["height"][i], inputs["width"][i]) for i in range(3)]


def torch_sync(device: str) -> Callable[[], None]:
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def load_manifest(run_dir: Union[str, Path]) -> dict[str, Any]:
    path = Path(run_dir) / "export" / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} has no exported artifacts ({path} missing): run `effvit-export {run_dir}` first")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        manifest, reason = None, f"not JSON: {exc}"
    else:
        reason = "not an export manifest (no list of artifacts with format, precision and path)"
    artifacts = manifest.get("artifacts") if isinstance(manifest, dict) else None
    if not isinstance(artifacts, list) or not all(
        isinstance(a, dict) and {"format", "precision", "path"} <= set(a) for a in artifacts
    ):
        raise ValueError(f"{path} is {reason}; rebuild it with `effvit-export {run_dir} --force`")
    return manifest


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
