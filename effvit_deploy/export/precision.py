"""Reduced-precision ONNX graphs derived from the verified fp32 graph.

fp16: ONNX Runtime's float16 converter (`onnxruntime.transformers.float16`, the same logic as
onnxconverter-common), with LayerNormalization, Softmax, Exp and the reductions kept in fp32 (an
fp16 LayerNorm overflows and wrecks ViT accuracy in TensorRT). For
mechanisms whose PyTorch code runs its attention math with autocast disabled (Performer's
positive random features and per-feature key sums, Nystrom's iterative pseudo-inverse), every
node of that math stays fp32 too, so the fp16 graph computes what `torch.autocast` would. Those
nodes are found by the exporter's name scopes before onnxslim (which drops them) and carried
over as the `ATTENTION_MARK` node metadata (`attention_scopes`, `mark_attention_math`); an fp16
conversion of such a mechanism that finds no marked node raises `Fp16Unsafe` rather than
silently running them in fp16.
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

from ..attention import REGISTRY

log = logging.getLogger(__name__)

FP32_OPS = [
    "LayerNormalization", "Softmax", "Exp", "ReduceMax", "ReduceSum", "ReduceMean", "Pow", "Sqrt",
    "Resize", "Range", "Min", "Max", "CumSum",
]


ATTENTION_MARK = "effvit.fp32_attention"  # node metadata key: the attention module the node computes for


def attention_scopes(path: Union[str, Path]) -> dict[str, str]:
    """{node name: attention module} for the nodes whose innermost module is an attention layer
    (not its qkv/proj submodules), read from the exporter's name scopes.

    The scopes exist only in the graph `torch.onnx.export` wrote: onnxslim drops node metadata,
    so call this before slimming and carry the result over with `mark_attention_math`.
    """
    import onnx

    scopes = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        raw = meta.get(ATTENTION_MARK) or meta.get("pkg.torch.onnx.name_scopes")
        if not raw:
            continue
        if ATTENTION_MARK in meta:
            scopes[node.name] = raw
            continue
        names = ast.literal_eval(raw)
        if len(names) >= 2 and str(names[-2]).endswith(".attn"):
            scopes[node.name] = str(names[-2])
    return scopes


def _region(graph, seeds: set[str]) -> set[str]:
    """`seeds` plus every node on a path between two of them (nodes a graph rewrite renamed or fused)."""
    producer = {out: n.name for n in graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    inputs = {n.name: list(n.input) for n in graph.node}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n.name)
    outputs = {n.name: list(n.output) for n in graph.node}

    def walk(step) -> set[str]:
        seen, todo = set(), list(seeds)
        while todo:
            for nxt in step(todo.pop()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    down = walk(lambda n: [c for out in outputs[n] for c in consumers.get(out, [])])
    up = walk(lambda n: [producer[i] for i in inputs[n] if i in producer])
    return seeds | (down & up)


def mark_attention_math(path: Union[str, Path], scopes: dict[str, str]) -> int:
    """Write the `ATTENTION_MARK` marker (in place) on the attention-math nodes of `path`: those
    named in `scopes` (from `attention_scopes` on the graph before slimming) and, per attention
    module, every node between two of them. Returns how many nodes carry it."""
    import onnx

    proto = onnx.load(str(path))
    present = {n.name for n in proto.graph.node}
    by_scope: dict[str, set[str]] = {}
    for name, scope in scopes.items():
        if name in present:
            by_scope.setdefault(scope, set()).add(name)
    marked = {name: scope for scope, seeds in by_scope.items() for name in _region(proto.graph, seeds)}
    for node in proto.graph.node:
        for prop in [p for p in node.metadata_props if p.key == ATTENTION_MARK]:
            node.metadata_props.remove(prop)
        if node.name in marked:
            node.metadata_props.add(key=ATTENTION_MARK, value=marked[node.name])
    onnx.save(proto, str(path))
    return len(marked)


class Fp16Unsafe(RuntimeError):
    """An fp16 graph would run attention maths that needs fp32 in fp16."""


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


def _skip_fp16_round_trips(proto) -> int:
    """Let fp32 nodes feed fp32 nodes directly; returns how many round trips were removed.

    The converter casts every output of a kept-fp32 node to fp16 and back before the next fp32
    node reads it, so a chain of fp32 nodes still rounds through fp16 at each step: Performer's
    per-feature key sums (down to 1e-30) became 0 there, then log(0) and 0/0 gave NaN. Each
    `Cast(to=float)` of such a `Cast(to=float16)` reads the fp32 value instead, and casts left
    unused are removed.
    """
    from onnx import TensorProto

    graph = proto.graph
    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node) -> int:
        return next((a.i for a in node.attribute if a.name == "to"), -1) if node.op_type == "Cast" else -1

    skipped = 0
    for node in graph.node:
        source = producer.get(node.input[0]) if node.input else None
        if (cast_to(node) == TensorProto.FLOAT and source is not None and cast_to(source) == TensorProto.FLOAT16
                and source.name.endswith("_cast_to_fp16_node")):  # the converter's cast of a kept-fp32 output
            node.input[0] = source.input[0]
            skipped += 1
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    return skipped


def keeps_attention_fp32(attention: str) -> bool:
    """Whether an fp16 graph of mechanism `attention` (a name in `effvit_deploy.attention.REGISTRY`,
    the attention-free reference included) keeps its attention math in fp32: the class fact
    `computes_in_fp32`."""
    return REGISTRY[attention].computes_in_fp32


def convert_fp16(src: Union[str, Path], dst: Union[str, Path], attention: str) -> int:
    """fp16 copy of the fp32 graph `src` at `dst` (float32 inputs/outputs); returns how many
    attention-math nodes were kept in fp32. Raises Fp16Unsafe when `attention` needs them
    (`keeps_attention_fp32`) and `src` marks none."""
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_attention = keeps_attention_fp32(attention)
    keep = list(attention_scopes(src)) if fp32_attention else []
    if fp32_attention and not keep:
        raise Fp16Unsafe(
            f"{src} does not mark its {attention} attention nodes, which must stay fp32 in an fp16 graph (their sums "
            "underflow in fp16): rebuild the fp32 graph with `effvit-export RUN_DIR --force` (0.3.0 graphs lack the mark)"
        )
    proto = onnx.load(str(src))
    fp32_constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        half = convert_float_to_float16(proto, keep_io_types=True, op_block_list=FP32_OPS, node_block_list=keep)
    _fold_constant_casts(half, fp32_constants)
    _skip_fp16_round_trips(half)
    onnx.save(half, str(dst))
    log.info("fp16 graph: %d attention-math nodes and ops %s kept in fp32", len(keep), ", ".join(FP32_OPS))
    return len(keep)


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
