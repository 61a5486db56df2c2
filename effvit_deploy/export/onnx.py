"""ONNX export with dynamic batch, height and width through `torch.onnx.export(dynamo=True)`.

Height and width are declared as multiples of the patch size (`patch * Dim`), so one graph
serves every resolution in range, square or not; the legacy TorchScript exporter would bake
the training-size position embedding in.
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Union

import torch
from torch import nn
from torch.export import Dim

from ..atomic import atomic_path
from ..backends.onnxruntime import INPUT_NAME
from .resample import portable_resampling

log = logging.getLogger(__name__)

OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18


def dynamic_shapes(patch_size: int, max_batch: int = 64, max_res: int = 4096) -> dict:
    """torch.export dynamic shapes: batch, and H/W as patch-size multiples."""
    max_cells = max(2, max_res // patch_size)
    return {
        "x": {
            0: Dim("batch", min=1, max=max(2, max_batch)),
            2: patch_size * Dim("grid_h", min=1, max=max_cells),
            3: patch_size * Dim("grid_w", min=1, max=max_cells),
        }
    }


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    *,
    sample_size: tuple[int, int] = (224, 224),
    max_batch: int = 64,
    max_res: int = 4096,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export `model` (eval mode, fp32) to `path` atomically; returns the path.

    The exporter's full onnxscript optimisation is replaced by its constant folding alone: the
    pattern-rewrite pass it also runs took over 10 minutes on the atrous ViT-S/16 graph (its many
    window slices) against about 90 s for the whole export without it, while folding is what
    removes the double-precision scalar casts TensorRT cannot parse. Further simplification is
    `slim_onnx` (onnxslim), applied by `export_run` only when parity still holds. The position
    embedding is resampled by matrix products (`resample.portable_resampling`), not a Resize op,
    so ONNX Runtime, OpenVINO and TensorRT compute it alike at every input size.
    """
    path = Path(path)
    patch = int(model.patch_embed.patch_size[0])
    model = model.eval()
    sample = torch.randn(2, 3, *sample_size)
    with atomic_path(path) as tmp, warnings.catch_warnings(), portable_resampling():
        warnings.simplefilter("ignore")
        import onnxscript.optimizer

        program = torch.onnx.export(
            model,
            (sample,),
            dynamic_shapes=dynamic_shapes(patch, max_batch, max_res),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=False,
            verbose=False,
        )
        onnxscript.optimizer.fold_constants(program.model)
        onnxscript.optimizer.remove_unused_nodes(program.model)
        program.save(str(tmp))
    log.info("exported %s", path)
    return path


def graph_info(path: Union[str, Path]) -> dict:
    """Opset (default domain) and IR version of an ONNX file, as the manifest records them."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"opset": opset, "ir_version": int(proto.ir_version)}


def make_tensorrt_friendly(path: Union[str, Path], min_res: int, img_size: int) -> dict[str, int]:
    """Exact rewrites that let the TensorRT ONNX parser read the exported graph; in place.

    - Resize antialias: an `F.interpolate(..., antialias=True)` left in a model (the position
      embedding's is written as matmuls by `export_onnx`; a mechanism may resample too) is
      exported as `Resize(antialias=1)`, which the TensorRT parser rejects
      (onnx-tensorrt onnxOpCheckers.cpp, Resize). ONNX defines antialias to act only when
      downscaling, so when the profile's smallest resolution is at least the training one the
      attribute is a no-op and is cleared. Below that it is kept (ORT stays exact; TensorRT
      compatibility then fails by name).
    - `Equal` on booleans (the exporter's sign test in integer floor division, e.g. Nystrom's
      segment indices): TensorRT's Equal takes numbers only, so `Equal(a, b)` becomes
      `Not(Xor(a, b))`, the same truth table on ops TensorRT lists for BOOL.

    Parity with PyTorch is verified afterwards. Returns {rewrite: count}.
    """
    import onnx
    from onnx import helper

    proto = onnx.load(str(path))
    typed = onnx.shape_inference.infer_shapes(proto)
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.input, *typed.graph.value_info]}
    counts = {"resize_antialias": 0, "bool_equal": 0}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "Resize" and min_res >= img_size:
            for attr in node.attribute:
                if attr.name == "antialias" and attr.i:
                    attr.i = 0
                    counts["resize_antialias"] += 1
        if node.op_type == "Equal" and dtypes.get(node.input[0]) == onnx.TensorProto.BOOL:
            xor = f"{node.output[0]}__xor"
            nodes.append(helper.make_node("Xor", list(node.input), [xor], name=f"{node.name}__xor"))
            nodes.append(helper.make_node("Not", [xor], list(node.output), name=node.name))
            counts["bool_equal"] += 1
            continue
        nodes.append(node)
    if any(counts.values()):
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        onnx.save(proto, str(path))
    return counts


def slim_onnx(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Graph simplification by onnxslim (constant folding, dead-node and shape-op elimination).

    The caller keeps the result only when parity with PyTorch still holds.
    """
    import onnx
    import onnxslim

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        slim = onnxslim.slim(onnx.load(str(src)))
    onnx.save(slim, str(dst))
    return Path(dst)
