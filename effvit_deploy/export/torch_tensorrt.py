"""The "torch-tensorrt" format: Torch-TensorRT (dynamo) compilation saved as an exported
program (its runner, which also verifies it: effvit_deploy/backends/torch_tensorrt.py).

The model is first captured by `torch.export` with the same dynamic batch / patch-multiple
height and width as the ONNX export (`onnx.dynamic_shapes`), then compiled by
`torch_tensorrt.dynamo.compile` with a min/opt/max profile and saved with
`torch_tensorrt.save(..., output_format="exported_program")` (Torch-TensorRT docs, "Saving
models compiled with Torch-TensorRT"). TensorRT 10 gets fp16/bf16 through
`enabled_precisions`; TensorRT 11 networks are strongly typed, so there the model itself is
cast to the precision and compiled with explicit typing.

`torch_tensorrt` is imported only inside these functions.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from ..atomic import atomic_path
from ..backends import TORCH_DTYPES, import_gpu_package, profile_shapes
from ..backends.tensorrt import trt_major
from .format import Format, gpu_stamp, tool_versions
from .onnx import dynamic_shapes
from .resample import portable_resampling

if TYPE_CHECKING:
    from .run import Exporter


def compile_and_save(model: nn.Module, path: Union[str, Path], precision: str, inputs: dict[str, list[int]]) -> dict[str, Any]:
    """Compile `model` for the min/opt/max profile in `inputs` and save it at `path`."""
    torch_tensorrt = import_gpu_package("torch_tensorrt", "Torch-TensorRT")
    import tensorrt as trt

    dtype = TORCH_DTYPES[precision]
    explicit = trt_major(trt) >= 11
    in_dtype = dtype if explicit else torch.float32
    model = model.to(device="cuda", dtype=in_dtype).eval()
    shapes = profile_shapes(inputs)
    example = torch.randn(*shapes[1], device="cuda", dtype=in_dtype)
    patch = int(model.patch_embed.patch_size[0])
    dyn = dynamic_shapes(patch, inputs["batch"][2], max(inputs["height"][2], inputs["width"][2]))
    with portable_resampling():
        program = torch.export.export(model, (example,), dynamic_shapes=dyn)
    spec = torch_tensorrt.Input(min_shape=shapes[0], opt_shape=shapes[1], max_shape=shapes[2], dtype=in_dtype)
    options: dict[str, Any] = {"inputs": [spec], "enabled_precisions": {dtype}, "min_block_size": 1}
    if explicit and "use_explicit_typing" in inspect.signature(torch_tensorrt.dynamo.compile).parameters:
        options = {"inputs": [spec], "use_explicit_typing": True, "min_block_size": 1}
    compiled = torch_tensorrt.dynamo.compile(program, **options)
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=[example])
    return {
        "torch_tensorrt_version": torch_tensorrt.__version__,
        "tensorrt_version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "input_dtype": str(in_dtype).replace("torch.", ""),
    }


def build(exporter: "Exporter", precision: str) -> dict[str, Any]:
    """model.PRECISION.torch_trt.ep compiled from the run's PyTorch model."""
    final = exporter.export_dir / f"model.{precision}.torch_trt.ep"
    label = exporter.label("Torch-TensorRT", precision)
    with atomic_path(final) as tmp:
        info = compile_and_save(exporter.model, tmp, precision, exporter.inputs)
        runner = exporter.runner("torch-tensorrt", tmp, {"format": "torch-tensorrt", "precision": precision,
                                                          "inputs": exporter.inputs, **info})
        extra = {**info, **exporter.verify_artifact(runner, precision, label),
                 "tool_versions": tool_versions("tensorrt", "torch_tensorrt")}
        entry = exporter.record("torch-tensorrt", precision, final, tmp, extra)
    return entry


TORCH_TENSORRT = Format("torch-tensorrt", "torch-tensorrt", build, stamp=gpu_stamp)
