"""The machine and software a measurement was made on, for every results file the project writes.

Hostname-free: CPU model and cores, memory, OS, Python, GPU and driver when present, library
versions and the git commit (with "-dirty" when the tree has uncommitted changes), so files from
different machines can be merged and compared.
"""
from __future__ import annotations

import os
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

LIBRARIES = ("torch", "timm", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "torch-tensorrt")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _gpu() -> dict[str, str]:
    import torch

    if not torch.cuda.is_available():
        return {"gpu": "", "gpu_driver": "", "cuda": ""}
    driver = ""
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = pynvml.nvmlSystemGetDriverVersion()
    except Exception:  # NVML is optional; the device name still comes from torch
        pass
    return {"gpu": torch.cuda.get_device_name(0), "gpu_driver": str(driver), "cuda": str(torch.version.cuda)}


@lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    """The machine and software a row was measured on (hostname-free)."""
    env: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        **_gpu(),
        "git_commit": _git_commit(),
    }
    for lib in LIBRARIES:
        try:
            env[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            env[lib] = ""
    return env
