"""Will TensorRT parse this ONNX graph? A check that needs no GPU and no TensorRT install.

Every node of the graph is checked against the TensorRT ONNX parser's own support matrix
(onnx/onnx-tensorrt docs/operators.md, shipped verbatim as data/tensorrt_onnx_operators.json
with its commit and TensorRT version) and against the parser's static checks that matter for
exported ViTs (onnx-tensorrt onnxOpCheckers.cpp / onnxOpImporters.cpp):

- the default-domain opset is inside the parser's range, and no node uses another domain
  (com.microsoft fused ops from ONNX Runtime's optimiser or quantiser are not TensorRT ops);
- the op is listed as supported, and its data input's element type is one it lists
  (e.g. DOUBLE, or INT64 where an op lists only INT32);
- Resize: mode nearest/linear/cubic, a supported coordinate transformation, no antialiasing,
  keep_aspect_ratio_policy "stretch";
- inputs the parser needs as initializers (Slice/Squeeze/Unsqueeze/Reduce* axes, CumSum axis,
  Clip bounds, TopK k) are initializers or Constant outputs;
- ScatterND without reduction; LayerNormalization with only its first output used.

It cannot see plugin availability or memory limits; a pass means the parser accepts every node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Union

OPERATORS_FILE = Path(__file__).with_name("data") / "tensorrt_onnx_operators.json"

_DTYPE_NAMES = {
    1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE", 16: "BF16",
}
_RESIZE_MODES = {"nearest", "linear", "cubic"}
_RESIZE_TRANSFORMS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_REDUCE_OPS = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
}
# (op, input index) the parser reads as weights (initializer or Constant output).
_CONSTANT_INPUTS = {
    ("Slice", 3): "axes", ("Squeeze", 1): "axes", ("Unsqueeze", 1): "axes", ("CumSum", 1): "axis",
    ("Clip", 1): "min", ("Clip", 2): "max", ("TopK", 1): "K",
    **{(op, 1): "axes" for op in _REDUCE_OPS},
}


@dataclass
class Problem:
    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} (node {self.node or '?'}): {self.reason}"


@dataclass
class CompatReport:
    """Result for one graph: ok when the parser's support matrix accepts every node."""

    path: str
    tensorrt_version: str
    opset: int
    ops: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.path}: opset {self.opset}, {sum(self.ops.values())} nodes, {len(self.ops)} op types"
        if self.ok:
            return f"{head}: TensorRT {self.tensorrt_version} ONNX parser supports every node"
        lines = [f"{head}: {len(self.problems)} node(s) TensorRT {self.tensorrt_version} cannot parse"]
        lines += [f"  - {p}" for p in self.problems[:20]]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "tensorrt_parser_doc": self.tensorrt_version,
            "problems": [str(p) for p in self.problems],
        }


class TensorRTIncompatible(RuntimeError):
    """The graph uses an op, attribute or type the TensorRT ONNX parser rejects."""


@lru_cache(maxsize=1)
def supported_operators() -> dict[str, Any]:
    """The shipped support matrix: {"tensorrt_version", "opset_min", "opset_max", "operators", ...}."""
    return json.loads(OPERATORS_FILE.read_text())


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node_problems(node, dtypes: dict[str, int], constants: set[str], table: dict[str, Any]) -> list[str]:
    spec = table.get(node.op_type)
    if spec is None:
        return ["not in the TensorRT ONNX parser's operator list"]
    if not spec["supported"]:
        return ["not supported by the TensorRT ONNX parser"]
    reasons = []
    data = node.input[0] if node.input else ""
    dtype = _DTYPE_NAMES.get(dtypes.get(data, 0))
    if dtype and spec["types"] and dtype not in spec["types"]:
        reasons.append(f"input type {dtype} not supported (supported: {', '.join(spec['types'])})")
    for (op, index), what in _CONSTANT_INPUTS.items():
        if node.op_type == op and len(node.input) > index and node.input[index] and node.input[index] not in constants:
            reasons.append(f"`{what}` must be an initializer or Constant, got the computed tensor {node.input[index]!r}")
    attrs = _attrs(node)

    def text(name: str, default: str) -> str:
        value = attrs.get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    if node.op_type == "Resize":
        if text("mode", "nearest") not in _RESIZE_MODES:
            reasons.append(f"mode {text('mode', 'nearest')!r} not supported")
        if text("coordinate_transformation_mode", "half_pixel") not in _RESIZE_TRANSFORMS:
            reasons.append(f"coordinate_transformation_mode {text('coordinate_transformation_mode', '')!r} not supported")
        if attrs.get("antialias", 0):
            reasons.append("antialias=1 is not supported (export with min resolution >= the training size, "
                           "where antialiasing is a no-op and is dropped)")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            reasons.append("only keep_aspect_ratio_policy='stretch' is supported")
    if node.op_type == "ScatterND" and text("reduction", "none") != "none":
        reasons.append("`reduction` is not supported")
    if node.op_type == "LayerNormalization" and any(node.output[1:]):
        reasons.append("only the first output Y is supported")
    if node.op_type == "Constant" and set(attrs) & {"sparse_value", "value_string", "value_strings"}:
        reasons.append("sparse or string constants are not supported")
    return reasons


def check_tensorrt_compat(path: Union[str, Path]) -> CompatReport:
    """Check every node of the ONNX graph at `path`; see the module docstring for what is checked.
    Raises ValueError when the file is not a readable ONNX model."""
    import onnx

    table = supported_operators()
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends: the file is not ONNX
        raise ValueError(f"{path} is not a readable ONNX model ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}): "
                         "it is truncated or not ONNX; export it again") from None
    try:
        proto = onnx.shape_inference.infer_shapes(proto)
    except Exception:  # noqa: BLE001 - type inference is best effort; op checks still run
        pass
    graph = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = CompatReport(str(path), table["tensorrt_version"], opset)
    if not table["opset_min"] <= opset <= table["opset_max"]:
        report.problems.append(Problem("", "opset", f"opset {opset} outside the parser's range "
                                                   f"{table['opset_min']}..{table['opset_max']}"))
    dtypes = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    dtypes.update({t.name: t.data_type for t in graph.initializer})
    constants = {t.name for t in graph.initializer}
    constants |= {out for n in graph.node if n.op_type == "Constant" for out in n.output}
    for node in graph.node:
        report.ops[node.op_type] = report.ops.get(node.op_type, 0) + 1
        if node.domain not in ("", "ai.onnx"):
            report.problems.append(Problem(node.name, f"{node.domain}.{node.op_type}",
                                           "custom-domain op: TensorRT needs a plugin for it"))
            continue
        for reason in _node_problems(node, dtypes, constants, table["operators"]):
            report.problems.append(Problem(node.name, node.op_type, reason))
    return report


def require_tensorrt_compat(path: Union[str, Path]) -> CompatReport:
    """`check_tensorrt_compat`, raising TensorRTIncompatible (naming every bad op) when it fails."""
    report = check_tensorrt_compat(path)
    if not report.ok:
        raise TensorRTIncompatible(report.summary())
    return report
