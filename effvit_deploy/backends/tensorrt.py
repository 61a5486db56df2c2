"""TensorRT: a serialised engine ("tensorrt" artifact) run through the TensorRT Python API with
torch CUDA tensors as bindings (`execute_async_v3`), following NVIDIA's TensorRT samples.

Engines are only valid for one GPU + TensorRT version: `gpu_slug` and `trt_major` are the names
and the version test the build stage (effvit_deploy/export/tensorrt.py) uses too.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from ..runs import ModelCard, load_model_card
from .base import GPU_INSTALL_HINT, Backend, Runner, ThreadPolicy, find_artifact, import_gpu_package, profile_shapes

_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


def trt_major(trt: Any) -> int:
    """TensorRT's major version (10 and 11 differ: 11 builds strongly typed networks only)."""
    return int(trt.__version__.split(".")[0])


def gpu_slug() -> str:
    """The current GPU's name as a file-name fragment, e.g. 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def gpu_package_status(package: str) -> Optional[str]:
    """None when `package` is installed and a CUDA device is visible, else the reason."""
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed: {GPU_INSTALL_HINT}"
    return None if torch.cuda.is_available() else "no CUDA device visible"


def load_engine_runner(path: Union[str, Path], entry: dict[str, Any], card: Optional[ModelCard], precision: str) -> Runner:
    """Deserialise an engine and run it with torch CUDA tensors as bindings."""
    trt = import_gpu_package("tensorrt", "TensorRT")
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
    if engine is None:
        raise RuntimeError(f"{path} is not an engine for TensorRT {trt.__version__} on {torch.cuda.get_device_name()}: "
                           "rebuild it with effvit-export --formats tensorrt --force")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inp = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    in_dtype = _TORCH_DTYPES[engine.get_tensor_dtype(inp).name]
    out_dtype = _TORCH_DTYPES[engine.get_tensor_dtype(out).name]
    lo, _, hi = profile_shapes(entry["inputs"])

    def prepare(batch: np.ndarray) -> torch.Tensor:
        shape = tuple(batch.shape)
        if len(shape) != 4 or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
            raise ValueError(f"input {shape} is outside the engine's profile {lo}..{hi}: re-export with "
                             "--min-res/--max-res/--max-batch covering it")
        return torch.from_numpy(np.ascontiguousarray(batch)).to(device="cuda", dtype=in_dtype)

    def run(x: torch.Tensor) -> torch.Tensor:
        context.set_input_shape(inp, tuple(x.shape))
        y = torch.empty(tuple(context.get_tensor_shape(out)), dtype=out_dtype, device="cuda")
        context.set_tensor_address(inp, x.data_ptr())
        context.set_tensor_address(out, y.data_ptr())
        if not context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for input {tuple(x.shape)}")
        return y

    runner = Runner(
        "tensorrt", precision, "cuda", card,
        prepare=prepare, run=run, to_numpy=lambda y: y.float().cpu().numpy(),
        synchronize=torch.cuda.synchronize, artifact=Path(path), threads={"threads": "n/a (GPU)"},
    )
    runner.engine, runner.context = engine, context  # keep them alive with the runner
    return runner


def _open(path: Path, entry: dict[str, Any], card: Optional[ModelCard], policy: ThreadPolicy) -> Runner:
    return load_engine_runner(path, entry, card, entry["precision"])


def _load(run_dir: Path, precision: str, device: str, policy: ThreadPolicy) -> Runner:
    path, entry = find_artifact(run_dir, "tensorrt", precision)
    return _open(path, entry, load_model_card(run_dir), policy)


TENSORRT = Backend("tensorrt", "tensorrt", "cuda", ("fp32", "fp16", "bf16"), lambda: gpu_package_status("tensorrt"),
                   _load, "a serialised TensorRT engine (Python API)", _open)
