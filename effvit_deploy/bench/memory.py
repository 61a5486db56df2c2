"""Peak memory of one configuration, measured in the process that runs it.

CPU (`cpu-rss-peak`): the increase of the process's resident-set high-water mark during
warm-up + timed calls over its resident set just before them, i.e. after imports, model or
session load and input preparation. Linux lets a process reset its high-water mark (write "5" to
/proc/self/clear_refs, proc(5)), so the peak is that of the inference alone. The figure counts
activations, workspaces and allocator/arena growth (ONNX Runtime's arena, glibc heaps) that
the calls touch; it excludes weights, the input, the interpreter and libraries, which are
resident before. One configuration per fresh process keeps one run's heap from hiding another's.

GPU: the PyTorch backends read the caching allocator (`torch.cuda.max_memory_allocated`
over the allocation before the calls: activations and workspaces); other GPU backends
(ONNX Runtime CUDA/TensorRT, TensorRT engines) allocate outside PyTorch, so NVML's device
memory in use is read before the runner is loaded and after the calls (`nvml-used-delta`:
weights, engine device memory, arenas and the CUDA context included).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class MemoryProbe:
    """before_load() -> load the runner -> before_run() -> calls -> after_run() -> bytes or None."""

    method = "none"
    note = ""

    def before_load(self) -> None:
        pass

    def before_run(self) -> None:
        pass

    def after_run(self) -> Optional[int]:
        return None


class CpuRssPeak(MemoryProbe):
    method = "cpu-rss-peak"

    def __init__(self) -> None:
        self.baseline = 0

    def before_run(self) -> None:
        _CLEAR_REFS.write_text("5")
        self.baseline = _status_kib("VmRSS")

    def after_run(self) -> Optional[int]:
        return max(0, _status_kib("VmHWM") - self.baseline) * 1024


class TorchCudaPeak(MemoryProbe):
    method = "torch-cuda-max-allocated"

    def before_run(self) -> None:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.baseline = torch.cuda.memory_allocated()

    def after_run(self) -> Optional[int]:
        import torch

        torch.cuda.synchronize()
        return max(0, torch.cuda.max_memory_allocated() - self.baseline)


class NvmlUsedDelta(MemoryProbe):
    method = "nvml-used-delta"

    def __init__(self, index: int = 0) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self.baseline = 0

    def _used(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def before_load(self) -> None:
        self.baseline = self._used()

    def after_run(self) -> Optional[int]:
        return max(0, self._used() - self.baseline)


def memory_probe(backend: str, device: str) -> MemoryProbe:
    """The probe that can measure this backend on this device, or a no-op probe with a note."""
    from ..backends.pytorch import COMPILE_OPTIONS

    if device == "cuda":
        if backend in COMPILE_OPTIONS:
            return TorchCudaPeak()
        try:
            return NvmlUsedDelta()
        except Exception as exc:  # pynvml missing or no driver: measure nothing rather than guess
            probe = MemoryProbe()
            probe.note = f"no GPU memory figure: NVML unavailable ({exc}); pip install nvidia-ml-py"
            return probe
    if _CLEAR_REFS.exists():
        try:
            _CLEAR_REFS.write_text("5")
            return CpuRssPeak()
        except OSError as exc:
            probe = MemoryProbe()
            probe.note = f"no CPU memory figure: cannot reset the RSS high-water mark ({exc})"
            return probe
    probe = MemoryProbe()
    probe.note = "no CPU memory figure: needs Linux /proc/self/clear_refs"
    return probe
