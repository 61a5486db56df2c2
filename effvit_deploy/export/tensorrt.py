"""The "tensorrt" format: engines built from the exported ONNX graph (their runner, which also
verifies them: effvit_deploy/backends/tensorrt.py).

Built with the TensorRT Python API (builder -> ONNX parser -> one optimisation profile over
batch, height and width -> serialised engine), following NVIDIA's TensorRT samples
(samples/python/common, `build_engine`). Versions are handled explicitly:

- TensorRT 11 removed `BuilderFlag.FP16/INT8` (networks are strongly typed): an fp16 engine is
  built from the fp16 ONNX graph (LayerNorm/softmax/exp kept fp32 there) as a strongly typed
  network. TensorRT 10 gets the same strongly typed build, so both produce the same engine;
  bf16 uses `BuilderFlag.BF16` on a weakly typed fp32 network, which only TensorRT 10 has.
- fp32 engines clear `BuilderFlag.TF32` so they keep fp32 parity (1e-4) with PyTorch.
- The timing cache is one file per GPU + CUDA + TensorRT version + precision, reused across
  builds (a timing cache is only valid for that combination); engines are
  named by precision, GPU and TensorRT version.
- Device memory is reported through `device_memory_size_v2` (TensorRT >= 10.1).

`tensorrt` is imported only inside these functions; without it they raise BackendUnavailable
with the install hint.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch

from ..atomic import atomic_path, write_bytes
from ..backends import BackendUnavailable, import_gpu_package, profile_shapes
from ..backends.tensorrt import gpu_slug, trt_major
from .format import Format, gpu_stamp, tool_versions
from .trt_compat import TensorRTIncompatible, require_tensorrt_compat

if TYPE_CHECKING:
    from .run import Exporter


def engine_filename(precision: str) -> str:
    trt = import_gpu_package("tensorrt", "TensorRT")
    return f"model.{precision}.{gpu_slug()}.trt{trt.__version__}.engine"


def timing_cache_path(cache_dir: Union[str, Path], precision: str) -> Path:
    trt = import_gpu_package("tensorrt", "TensorRT")
    return Path(cache_dir) / f"timing.{gpu_slug()}.cuda{torch.version.cuda}.trt{trt.__version__}.{precision}.cache"


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
    profile.set_shape(name, *profile_shapes(inputs))
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


def _onnx_precision(precision: str) -> str:
    """The ONNX graph an engine of `precision` is parsed from (fp16 from the fp16 graph)."""
    return "fp16" if precision == "fp16" else "fp32"


def build(exporter: "Exporter", precision: str) -> dict[str, Any]:
    """A serialised engine of `precision` from the verified ONNX graph, checked for TensorRT first."""
    onnx_entry = exporter.entries[("onnx", _onnx_precision(precision))]
    onnx_path = exporter.export_dir / onnx_entry["path"]
    require_tensorrt_compat(onnx_path)
    final = exporter.export_dir / engine_filename(precision)
    label = exporter.label("TensorRT", precision)
    with atomic_path(final) as tmp:
        info = build_engine(onnx_path, tmp, precision, exporter.inputs, exporter.export_dir / "trt_cache")
        runner = exporter.runner("tensorrt", tmp, {"format": "tensorrt", "precision": precision,
                                                    "inputs": exporter.inputs, **info})
        extra = {**info, **exporter.verify_artifact(runner, precision, label),
                 "onnx": onnx_entry["path"], "tool_versions": tool_versions("tensorrt")}
        entry = exporter.record("tensorrt", precision, final, tmp, extra)
    return entry


TENSORRT = Format("tensorrt", "tensorrt", build,
                  sources=lambda precision: [("onnx", "fp32"), ("onnx", _onnx_precision(precision))], stamp=gpu_stamp)
