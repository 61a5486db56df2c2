"""The "onnx" format: export with dynamic batch, height and width through
`torch.onnx.export(dynamo=True)`, its reduced-precision variants, and its `Format` record
(run and verified by the "onnxruntime" backend).

Height and width are declared as multiples of the patch size (`patch * Dim`), so one graph
serves every resolution in range, square or not; the legacy TorchScript exporter would bake
the training-size position embedding in.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union

import numpy as np

import torch
from torch import nn
from torch.export import Dim

from ..atomic import atomic_path
from ..backends import BACKENDS, ThreadPolicy
from ..backends.onnxruntime import INPUT_NAME
from .format import Format, tool_versions
from .precision import attention_scopes, convert_fp16, mark_attention_math, quantize_int8, quantize_static_int8
from .resample import portable_resampling
from .trt_compat import check_tensorrt_compat

if TYPE_CHECKING:
    from .run import Exporter

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


NAMES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx",
         "int8-static": "model.int8-static.onnx"}


def ort_predict(path: Union[str, Path], precision: str = "fp32") -> Callable[[np.ndarray], np.ndarray]:
    """float32 NCHW -> float32 logits of the graph at `path`, through the "onnxruntime" backend
    (CPU provider, passive threads: verification, not timing)."""
    entry = {"format": "onnx", "precision": precision}
    return BACKENDS["onnxruntime"].open(Path(path), entry, None, ThreadPolicy(passive=True))


def build(exporter: "Exporter", precision: str) -> dict[str, Any]:
    """model.onnx (fp32: exported, TensorRT-friendly rewrites, onnxslim'd when still exact,
    attention math marked) or a variant converted from it (fp16, dynamic or static int8)."""
    final = exporter.export_dir / NAMES[precision]
    label = exporter.label("ONNX", precision)
    extra: dict[str, Any] = {}
    with atomic_path(final) as tmp:
        if precision == "fp32":
            h = exporter.inputs["height"]
            export_onnx(exporter.model, tmp, sample_size=(h[0], h[0]), max_batch=exporter.inputs["batch"][2],
                        max_res=h[2], opset=exporter.opset)
            extra["rewrites"] = make_tensorrt_friendly(tmp, h[0], exporter.card.img_size)
            scopes = attention_scopes(tmp)  # before onnxslim, which drops the exporter's name scopes
            extra.update(_slim_if_exact(exporter, tmp, label))
            extra["attention_nodes_marked"] = mark_attention_math(tmp, scopes)
        else:
            src = exporter.export_dir / NAMES["fp32"]
            if precision == "fp16":
                extra["fp32_attention_nodes"] = convert_fp16(src, tmp, exporter.card.attention)
                extra["io_dtype"] = "float32"
            elif precision == "int8-static":
                extra["quantization"] = quantize_static_int8(src, tmp, exporter.calibration(), INPUT_NAME)
            else:
                quantize_int8(src, tmp)
        runner = exporter.runner("onnx", tmp, {"format": "onnx", "precision": precision})
        extra.update(exporter.verify_artifact(runner, precision, label))
        extra.update(graph_info(tmp))
        if not precision.startswith("int8"):
            extra["tensorrt_check"] = check_tensorrt_compat(tmp).as_dict()
        extra["tool_versions"] = tool_versions()
        entry = exporter.record("onnx", precision, final, tmp, extra)
    return entry


def _slim_if_exact(exporter: "Exporter", path: Path, label: str) -> dict[str, Any]:
    """Replace `path` by its onnxslim'd graph when that still passes fp32 parity."""
    if not exporter.verify:
        return {"optimized": None}
    slim = path.with_name(path.name + ".slim")
    try:
        slim_onnx(path, slim)
        exporter.check_parity(exporter.runner("onnx", slim, {"format": "onnx", "precision": "fp32"}), "fp32",
                              label + " after onnxslim")
    except Exception as exc:  # noqa: BLE001 - a parity miss or optimiser crash only costs the optimisation
        slim.unlink(missing_ok=True)
        log.warning("onnxslim not applied, keeping the unoptimised graph: %s", exc)
        return {"optimized": None}
    os.replace(slim, path)
    return {"optimized": f"onnxslim {tool_versions()['onnxslim']}"}


def _sources(precision: str) -> list[tuple[str, str]]:
    return [] if precision == "fp32" else [("onnx", "fp32")]


# Built with torch and onnx alone; onnxruntime is needed to verify it (its import error says so).
ONNX = Format("onnx", "onnxruntime", build, _sources, needs_runtime=False)
