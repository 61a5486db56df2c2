"""PyTorch eager and torch.compile: the run's own weights (checkpoints/best.safetensors).

Three ways to run the same module, one table (`COMPILE_OPTIONS`):

    torch                     eager
    torch-compile             torch.compile(dynamic=True): one compiled graph serves every size
    torch-compile-cudagraphs  torch.compile(mode="reduce-overhead", dynamic=False): inductor kernels
                              replayed as a CUDA graph, one per input shape. For small batches, where
                              a ViT is bound by kernel launches rather than arithmetic (batch 1 on a
                              large GPU), replay removes the per-kernel CPU launch cost. CUDA only.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..runs import load_run
from .base import TORCH_DTYPES, Backend, BackendUnavailable, Runner, ThreadPolicy, torch_sync

CUDAGRAPHS = "torch-compile-cudagraphs"
# backend name -> torch.compile keyword arguments (None: eager)
COMPILE_OPTIONS: dict[str, Optional[dict]] = {
    "torch": None,
    "torch-compile": {"dynamic": True},
    CUDAGRAPHS: {"mode": "reduce-overhead", "dynamic": False},
}


def apply_torch_threads(policy: ThreadPolicy) -> dict:
    """Set PyTorch's intra-op threads when the policy names a count; report what is in force."""
    if policy.threads is not None:
        torch.set_num_threads(policy.threads)
    return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "passive": policy.passive}


def _cudagraphs_status() -> Optional[str]:
    if not torch.cuda.is_available():
        return ("CUDA graphs need an NVIDIA GPU and none is visible (torch.cuda.is_available() is False); "
                "use torch-compile on CPU")
    return None


def inference_forward(module: nn.Module, backend: str, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` as `backend` runs it, called under inference_mode: x -> output.

    Raises BackendUnavailable for torch-compile-cudagraphs on a device other than CUDA (one line,
    the fix included) and ValueError for a backend name not in `COMPILE_OPTIONS`.
    """
    if backend not in COMPILE_OPTIONS:
        raise ValueError(f"unknown PyTorch backend {backend!r}; valid: {', '.join(COMPILE_OPTIONS)}")
    if backend == CUDAGRAPHS and device != "cuda":
        raise BackendUnavailable(f"{CUDAGRAPHS} runs on CUDA only (asked for {device}): "
                                 f"{_cudagraphs_status() or 'pick the cuda device'}")
    options = COMPILE_OPTIONS[backend]
    forward = module if options is None else torch.compile(module, **options)
    graphed = backend == CUDAGRAPHS

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if graphed:  # each call is a new step: the previous call's graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            return forward(x)

    return run


def torch_runner(module: nn.Module, backend: str, precision: str, device: str, card=None,
                 threads: Optional[dict] = None) -> Runner:
    """A Runner over an in-memory module in `precision` (weights and input cast to its dtype)."""
    dtype = TORCH_DTYPES[precision]
    module = module.to(device=device, dtype=dtype)
    return Runner(
        backend, precision, device, card,
        prepare=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device=device, dtype=dtype),
        run=inference_forward(module, backend, device),
        to_numpy=lambda y: y.float().cpu().numpy(),
        synchronize=torch_sync(device),
        threads=threads or {},
    )


def _load(backend: str):
    def load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
        model, card = load_run(run_dir)
        return torch_runner(model, backend, precision, device, card, threads=apply_torch_threads(policy))

    return load


TORCH = Backend("torch", None, "auto", tuple(TORCH_DTYPES), lambda: None, _load("torch"),
                "eager PyTorch on the run's weights")
TORCH_COMPILE = Backend("torch-compile", None, "auto", tuple(TORCH_DTYPES), lambda: None, _load("torch-compile"),
                        "the same through torch.compile(dynamic=True)")
TORCH_COMPILE_CUDAGRAPHS = Backend(
    CUDAGRAPHS, None, "cuda", tuple(TORCH_DTYPES), _cudagraphs_status, _load(CUDAGRAPHS),
    "the same through torch.compile(mode='reduce-overhead'): CUDA graphs, for batch-1 latency (CUDA only)")
