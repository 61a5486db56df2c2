"""Torch-TensorRT: a saved exported program ("torch-tensorrt" artifact) run on CUDA
(Torch-TensorRT docs, "Saving models compiled with Torch-TensorRT")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..runs import ModelCard, load_model_card
from .base import TORCH_DTYPES, Backend, Runner, ThreadPolicy, find_artifact, import_gpu_package
from .tensorrt import gpu_package_status


def load_torch_tensorrt_runner(path: Union[str, Path], entry: dict[str, Any], card: Optional[ModelCard], precision: str) -> Runner:
    """Load a saved Torch-TensorRT exported program and run it on CUDA."""
    import_gpu_package("torch_tensorrt", "Torch-TensorRT")
    module = torch.export.load(str(path)).module()
    in_dtype = getattr(torch, entry.get("input_dtype", "float32"))

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return module(x)

    return Runner(
        "torch-tensorrt", precision, "cuda", card,
        prepare=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device="cuda", dtype=in_dtype),
        run=run, to_numpy=lambda y: y.float().cpu().numpy(), synchronize=torch.cuda.synchronize,
        artifact=Path(path), threads={"threads": "n/a (GPU)"},
    )


def _open(path: Path, entry: dict[str, Any], card: Optional[ModelCard], policy: ThreadPolicy) -> Runner:
    return load_torch_tensorrt_runner(path, entry, card, entry["precision"])


def _load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
    path, entry = find_artifact(run_dir, "torch-tensorrt", precision)
    return _open(path, entry, load_model_card(run_dir), policy)


TORCH_TENSORRT = Backend("torch-tensorrt", "torch-tensorrt", "cuda", tuple(TORCH_DTYPES),
                         lambda: gpu_package_status("torch_tensorrt"), _load,
                         "a Torch-TensorRT exported program", _open)
