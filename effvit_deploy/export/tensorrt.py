"""TensorRT engines from the exported ONNX graph, their runner, and ONNX Runtime's TensorRT options.

Built with the TensorRT Python API (builder -> ONNX parser -> one optimisation profile over
batch, height and width -> serialised engine), following NVIDIA's TensorRT samples
(samples/python/common, `build_engine`). Versions are handled explicitly:

- TensorRT 11 removed `BuilderFlag.FP16/INT8` (networks are strongly typed): an fp16 engine is
  built from the fp16 ONNX graph (LayerNorm/softmax/exp kept fp32 there) as a strongly typed
  network. TensorRT 10 gets the same strongly typed build, so both produce the same engine;
  bf16 uses `BuilderFlag.BF16` on a weakly typed fp32 network, which only TensorRT 10 has.
- fp32 engines clear `BuilderFlag.TF32` so they keep fp32 parity (1e-4) with PyTorch.
- The timing cache is one file per GPU + CUDA + TensorRT version + precision, reused across
  builds (a cache is only valid for that combination: shared/DESIGN.md, pitfalls); engines are
  named by precision, GPU and TensorRT version.
- Device memory is reported through `device_memory_size_v2` (TensorRT >= 10.1).

`tensorrt` is imported only inside these functions; without it they raise BackendUnavailable
with the install hint.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from ..atomic import write_bytes
from ..backends import BackendUnavailable, Runner, import_gpu_package
from ..runs import ModelCard
from .onnx import INPUT_NAME
from .trt_compat import TensorRTIncompatible


def trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_slug() -> str:
    """The current GPU's name as a file-name fragment, e.g. 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")


def engine_filename(precision: str) -> str:
    trt = import_gpu_package("tensorrt", "TensorRT")
    return f"model.{precision}.{gpu_slug()}.trt{trt.__version__}.engine"


def timing_cache_path(cache_dir: Union[str, Path], precision: str) -> Path:
    trt = import_gpu_package("tensorrt", "TensorRT")
    return Path(cache_dir) / f"timing.{gpu_slug()}.cuda{torch.version.cuda}.trt{trt.__version__}.{precision}.cache"


def _shapes(inputs: dict[str, list[int]]) -> list[tuple[int, int, int, int]]:
    return [(inputs["batch"][i], 3, inputs["height"][i], inputs["width"][i]) for i in range(3)]


def build_engine(
    onnx_path: Union[str, Path], engine_path: Union[str, Path], precision: str, inputs: dict[str, list[int]],
    cache_dir: Union[str, Path],
) -> dict[str, Any]:
    """Build and serialise an engine for `precision` with one min/opt/max profile; returns its facts."""
    trt = import_gpu_package("tensorrt", "TensorRT")
    major = trt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = precision != "bf16"
    if precision == "bf16" and (major >= 11 or not hasattr(trt.BuilderFlag, "BF16")):
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} builds only strongly typed networks and has no BF16 builder flag: "
            "build fp16 (from the fp16 ONNX graph) or fp32 instead"
        )
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTIncompatible(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    profile.set_shape(name, *_shapes(inputs))
    config.add_optimization_profile(profile)
    cache_file = timing_cache_path(cache_dir, precision)
    cached = cache_file.read_bytes() if cache_file.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cached), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see its log above)")
    Path(engine_path).write_bytes(bytes(serialized))
    write_bytes(cache_file, bytes(config.get_timing_cache().serialize()))
    engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
    memory = getattr(engine, "device_memory_size_v2", None)
    return {
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "cuda": torch.version.cuda,
        "strongly_typed": strongly_typed,
        "timing_cache": cache_file.name,
        "timing_cache_reused": bool(cached),
        "device_memory_bytes": int(memory if memory is not None else engine.device_memory_size),
    }


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32}


def load_engine_runner(path: Union[str, Path], entry: dict[str, Any], card: ModelCard, precision: str) -> Runner:
    """Deserialise an engine and run it with torch CUDA tensors as bindings (execute_async_v3)."""
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
    lo, _, hi = _shapes(entry["inputs"])

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
        synchronize=torch.cuda.synchronize, artifact=Path(path),
    )
    runner.engine, runner.context = engine, context  # keep them alive with the runner
    return runner


def ort_tensorrt_provider_options(onnx_path: Union[str, Path], entry: dict[str, Any]) -> dict[str, Any]:
    """ONNX Runtime TensorrtExecutionProvider options for an exported graph.

    Every dynamic dimension gets a min/opt/max profile (batch, height, width), and the engine
    and timing caches live next to the graph, so a second session with the same options reuses
    the engine instead of rebuilding it (shared/DESIGN.md, pitfalls).
    """
    cache = Path(onnx_path).parent / "ort_trt_cache"
    cache.mkdir(parents=True, exist_ok=True)
    shapes = [f"{INPUT_NAME}:{b}x{c}x{h}x{w}" for b, c, h, w in _shapes(entry["inputs"])]
    return {
        "trt_profile_min_shapes": shapes[0],
        "trt_profile_opt_shapes": shapes[1],
        "trt_profile_max_shapes": shapes[2],
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_fp16_enable": entry["precision"] == "fp16",
    }
