"""What every format module shares: the `Format` record, the toolchain versions and the
ExportUnavailable error.

A format is the build side of a runtime: `export/<format>.py` holds its builder and its `Format`
record, and the `Backend` named by the record (effvit_deploy/backends/) runs the artifact, both
when export verifies it and when bench or demo use it. The precisions a format builds are the
ones its backend runs, so they are stated once, on the backend.
"""
from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional

from ..backends import BACKENDS, Backend, BackendUnavailable

if TYPE_CHECKING:
    from .run import Exporter

_TOOLS = ("torch", "timm", "onnx", "onnxscript", "onnxruntime", "onnxslim", "openvino")


class ExportUnavailable(BackendUnavailable):
    """A requested format cannot be built on this machine; the message says how to fix it."""


def tool_versions(*extra: str) -> dict[str, Optional[str]]:
    """Installed versions of the export toolchain (None when absent)."""
    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in (*_TOOLS, *extra):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def gpu_stamp() -> dict[str, Any]:
    """What a TensorRT artifact depends on besides weights and options: the GPU and the toolchain."""
    import torch

    return {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "toolchain": tool_versions("tensorrt", "torch_tensorrt")}


def _no_sources(precision: str) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class Format:
    """One export format.

    `name`: the manifest's format (the backend's `artifact`); `backend`: the name in `BACKENDS`
    of the runtime that verifies and runs it; `build(exporter, precision)` writes, verifies and
    returns the manifest entry of one artifact (`Exporter.verify_artifact`, `Exporter.record`);
    `sources(precision)`: the (format, precision) artifacts it is built from, built first;
    `stamp()`: what the artifact depends on besides weights and options (GPU, toolchain), part
    of the stamp that decides whether it is rebuilt; `needs_runtime`: False when the format can
    be built without its backend being usable here (the ONNX graph needs only torch and onnx).
    """

    name: str
    backend: str
    build: Callable[["Exporter", str], dict[str, Any]]
    sources: Callable[[str], list[tuple[str, str]]] = _no_sources
    stamp: Callable[[], dict[str, Any]] = field(default=dict)
    needs_runtime: bool = True

    @property
    def runtime(self) -> Backend:
        return BACKENDS[self.backend]

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.runtime.precisions

    def unavailable(self) -> Optional[str]:
        """None when this format can be built here, else the reason (the backend's status)."""
        return self.runtime.status() if self.needs_runtime else None
