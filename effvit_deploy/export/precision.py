"""Reduced-precision ONNX graphs derived from the verified fp32 graph.

fp16: ONNX Runtime's float16 converter (`onnxruntime.transformers.float16`, the same logic as
onnxconverter-common), with LayerNormalization, Softmax, Exp and the reductions kept in fp32 (an
fp16 LayerNorm overflows and wrecks ViT accuracy in TensorRT). For
mechanisms whose PyTorch code runs its attention math with autocast disabled (Performer's
positive random features, Nystrom's iterative pseudo-inverse), every node directly inside those
attention modules stays fp32 too, so the fp16 graph computes what `torch.autocast` would.
Inputs and outputs stay float32 (`keep_io_types`): callers feed and read float32 for every
precision.

int8: `onnxruntime.quantization.quantize_dynamic` (weights int8 per tensor, activations quantised
on the fly), a CPU serving format.

int8-static: `onnxruntime.quantization.quantize_static` in QDQ format, activation ranges
calibrated on the run's training images (ONNX Runtime docs, "Quantize ONNX models", static
quantisation). Only the inputs of weight-bearing MatMul/Gemm/Conv nodes are quantised (per-channel
int8 weights, int8 activations; their outputs and the activation x activation attention products
stay float), so LayerNorm, Softmax and GELU run in float on float inputs, as post-training quantisation
studies of ViTs recommend (Liu et al., "Post-Training Quantization for Vision Transformer",
NeurIPS 2021; Lin et al., "FQ-ViT", IJCAI 2022: LayerNorm inputs and softmax outputs are the
badly-distributed activations). The QDQ graph also runs on OpenVINO, which executes the
quantised MatMuls in int8.
"""
from __future__ import annotations

import ast
import logging
import warnings
from pathlib import Path
from typing import Iterable, Union

import numpy as np

log = logging.getLogger(__name__)

FP32_OPS = [
    "LayerNormalization", "Softmax", "Exp", "ReduceMax", "ReduceSum", "ReduceMean", "Pow", "Sqrt",
    "Resize", "Range", "Min", "Max", "CumSum",
]
FP32_ATTENTION = {"performer", "nystrom"}


def _attention_math_nodes(proto) -> list[str]:
    """Nodes whose innermost module is an attention layer (not its qkv/proj/conv submodules)."""
    names = []
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        raw = meta.get("pkg.torch.onnx.name_scopes")
        if not raw:
            continue
        scopes = ast.literal_eval(raw)
        if len(scopes) >= 2 and str(scopes[-2]).endswith(".attn"):
            names.append(node.name)
    return names


def _fold_constant_casts(proto, fp32_constants: dict) -> None:
    """Replace `Cast(fp16 initializer -> fp32)` by the original fp32 initializer.

    The converter halves a constant shared by fp16 and fp32 nodes and casts it back for the fp32
    ones; TensorRT needs some of those inputs as initializers (Clip bounds) and the round trip
    loses precision, so the fp32 node gets the original value instead.
    """
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    initializers = {t.name for t in graph.initializer}
    nodes = []
    for node in graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type == "Cast" and to == TensorProto.FLOAT and node.input[0] in initializers and node.input[0] in fp32_constants:
            graph.initializer.append(numpy_helper.from_array(fp32_constants[node.input[0]], node.output[0]))
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for t in unused:
        graph.initializer.remove(t)


def convert_fp16(src: Union[str, Path], dst: Union[str, Path], attention: str) -> Path:
    """fp16 copy of the fp32 graph `src` at `dst` (float32 inputs/outputs)."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = onnx.load(str(src))
    fp32_constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    keep = _attention_math_nodes(proto) if attention in FP32_ATTENTION else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=keep)
    _fold_constant_casts(half, fp32_constants)
    onnx.save(half, str(dst))
    log.info("fp16 graph: %d attention-math nodes and ops %s kept in fp32", len(keep), ", ".join(FP32_OPS))
    return Path(dst)


def quantize_int8(src: Union[str, Path], dst: Union[str, Path]) -> Path:
    """Dynamically quantised (int8 weights, per-batch activation scales) copy of `src`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser's "consider pre-processing" advice targets static quantisation
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    return Path(dst)


STATIC_INT8_OPS = ["MatMul", "Gemm", "Conv"]


def weight_nodes(path: Union[str, Path]) -> list[str]:
    """Names of the nodes that multiply by a stored weight: Conv, and MatMul/Gemm whose second
    input is an initializer (the linear layers; not the activation x activation attention products)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    weights |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node
            if n.op_type == "Conv" or (n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in weights)]


class _Batches:
    """onnxruntime CalibrationDataReader over float32 NCHW batches."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self._feeds = iter([{input_name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self._feeds, None)


def quantize_static_int8(src: Union[str, Path], dst: Union[str, Path], calibration: np.ndarray,
                         input_name: str, batch: int = 8) -> dict:
    """QDQ int8 copy of `src` calibrated (min/max) on `calibration` images; returns its recipe."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(src), str(dst), _Batches(input_name, (calibration[i:i + batch] for i in range(0, len(calibration), batch))),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=STATIC_INT8_OPS, nodes_to_quantize=weight_nodes(src),
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"MatMulConstBOnly": True, "OpTypesToExcludeOutputQuantization": STATIC_INT8_OPS},
            )
    finally:
        root.setLevel(level)
    return {"method": "static QDQ, MinMax calibration", "quantized_ops": STATIC_INT8_OPS, "float_ops": "all others",
            "per_channel": True, "calibration_images": int(len(calibration))}
