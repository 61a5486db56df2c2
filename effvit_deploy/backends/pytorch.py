"""PyTorch eager and torch.compile: the run's own weights (checkpoints/best.safetensors)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..runs import load_run
from .base import TORCH_DTYPES, Backend, Runner, ThreadPolicy, torch_sync


def apply_torch_threads(policy: ThreadPolicy) -> dict:
    """Set PyTorch's intra-op threads when the policy names a count; report what is in force."""
    if policy.threads is not None:
        torch.set_num_threads(policy.threads)
    return {"threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
            "passive": policy.passive}


def _load(compiled: bool):
    def load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
        model, card = load_run(run_dir)
        dtype = TORCH_DTYPES[precision]
        threads = apply_torch_threads(policy)
        model = model.to(device=device, dtype=dtype)
        forward = torch.compile(model, dynamic=True) if compiled else model

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return forward(x)

        return Runner(
            "torch-compile" if compiled else "torch", precision, device, card,
            prepare=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device=device, dtype=dtype),
            run=run,
            to_numpy=lambda y: y.float().cpu().numpy(),
            synchronize=torch_sync(device),
            threads=threads,
        )

    return load


TORCH = Backend("torch", None, "auto", tuple(TORCH_DTYPES), lambda: None, _load(False),
                "eager PyTorch on the run's weights")
TORCH_COMPILE = Backend("torch-compile", None, "auto", tuple(TORCH_DTYPES), lambda: None, _load(True),
                        "the same through torch.compile(dynamic=True)")
