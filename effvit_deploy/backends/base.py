"""What every runtime module shares: the `Runner`, the `Backend` record, the thread policy, the
precision -> dtype table, the TensorRT-style input profile and the export manifest lookup."""
from __future__ import annotations

import hashlib
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
# (artifact path, its manifest entry, the run's card, thread policy) -> Runner
Opener = Callable[[Path, dict[str, Any], Optional[ModelCard], ThreadPolicy], Runner]


@dataclass(frozen=True)
class Backend:
    """One runtime: what it runs, where, whether it can run here, and how to load a runner.

    `artifact` is the manifest format it reads (None: the run's own weights); `device` is "cpu",
    "cuda" or "auto" (CUDA when visible); `status()` is None when usable, else the reason and fix;
    `load(run_dir, precision, device, policy)` returns a Runner; `precisions` lists what it runs.
    `open(path, entry, card, policy)` runs one artifact file given its manifest entry (format,
    precision, inputs), found or not yet listed: export verifies the file it has just built
    through it. None for the backends that run the run's own weights.
    """

    name: str
    artifact: Optional[str]
    device: str
    precisions: tuple[str, ...]
    status: Callable[[], Optional[str]]
    load: Loader
    summary: str
    open: Optional[Opener] = None

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


class ArtifactError(ValueError):
    """An artifact the manifest lists cannot be trusted: its path leaves the export folder, its file
    changed since export, or it was built from other weights than the run's current ones."""


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Union[str, Path]) -> str:
    """SHA-256 of a file, cached per (path, size, mtime) so repeated checks of one artifact are free."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def artifact_path(run_dir: Union[str, Path], relative: Any) -> Path:
    """RUN_DIR/export/`relative`, refused (ArtifactError) unless it stays inside the export folder
    (no absolute path, no `..`, no symlink leading out)."""
    export_dir = Path(run_dir) / "export"
    rel = Path(str(relative))
    path = export_dir / rel
    if not isinstance(relative, str) or rel.is_absolute() or ".." in rel.parts or not relative.strip():
        raise ArtifactError(f"{export_dir / MANIFEST} lists the artifact path {relative!r}, which leaves the export "
                            f"folder: the manifest was edited; rebuild it with `effvit-export {run_dir} --force`")
    if not path.resolve().is_relative_to(export_dir.resolve()):
        raise ArtifactError(f"{path} links outside {export_dir}: artifacts must live in the export folder; "
                            f"rebuild with `effvit-export {run_dir} --force`")
    return path


def check_artifact(run_dir: Union[str, Path], entry: dict[str, Any], manifest: dict[str, Any]) -> Path:
    """The entry's artifact path after checking that it is confined to the export folder, that the
    file (and an OpenVINO .bin) has the SHA-256 export recorded, and that it was built from the
    run's current checkpoints/best.safetensors. Raises ArtifactError naming what is wrong and the fix;
    FileNotFoundError when the file is missing."""
    run_dir = Path(run_dir)
    fmt, precision = entry["format"], entry["precision"]
    redo = f"`effvit-export {run_dir} --formats {fmt} --precision {precision} --force`"
    path = artifact_path(run_dir, entry["path"])
    files = [(path, entry.get("sha256"))]
    if isinstance(entry.get("weights_file"), dict):
        files.append((artifact_path(run_dir, entry["weights_file"].get("path")), entry["weights_file"].get("sha256")))
    for file, expected in files:
        if not file.is_file():
            kind = "a folder, expected a file" if file.is_dir() else "missing"
            raise FileNotFoundError(f"{fmt} {precision} artifact {file} is {kind}: rebuild it with {redo}")
        if expected and file_sha256(file) != expected:
            raise ArtifactError(f"{file} is not the file effvit-export wrote (its SHA-256 differs from the manifest's): "
                                f"it was modified, truncated or replaced; rebuild it with {redo}")
    built_from = (entry.get("source") or {}).get("weights_sha256") or manifest.get("weights_sha256")
    weights = run_dir / "checkpoints" / "best.safetensors"
    if built_from and weights.is_file() and file_sha256(weights) != built_from:
        raise ArtifactError(
            f"{path} is stale: it was exported from other weights than {weights} now holds (SHA-256 "
            f"{built_from[:12]} vs {file_sha256(weights)[:12]}); re-export with {redo}"
        )
    return path


def find_artifact(run_dir: Union[str, Path], fmt: str, precision: str = "fp32") -> tuple[Path, dict[str, Any]]:
    """(absolute path, manifest entry) of the artifact of this format and precision, checked by
    `check_artifact` (confined, unmodified, built from the current weights)."""
    manifest = load_manifest(run_dir)
    for entry in manifest.get("artifacts", []):
        if entry["format"] == fmt and entry["precision"] == precision:
            return check_artifact(run_dir, entry, manifest), entry
    have = ", ".join(f"{e['format']}/{e['precision']}" for e in manifest.get("artifacts", [])) or "none"
    raise FileNotFoundError(
        f"{run_dir} has no {fmt} {precision} artifact (have: {have}); "
        f"run `effvit-export {run_dir} --formats {fmt} --precision {precision}`"
    )
