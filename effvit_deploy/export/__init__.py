"""Stage 2: lower trained models to ONNX, TensorRT and Torch-TensorRT, and verify them.

    from effvit_deploy.export import export_run
    manifest = export_run("runs/digits-exact", formats=("onnx",), precisions=("fp32", "fp16"), int8=True)

`export_onnx` (with `make_tensorrt_friendly`) lowers a model that is not a training run, such as
the attention-free bound, with the same exporter and input profile. GPU toolchains (tensorrt,
torch_tensorrt) are imported only when their format is requested.
"""
from .onnx import export_onnx, make_tensorrt_friendly
from .run import FORMATS, PRECISIONS, ExportUnavailable, export_run
from .trt_compat import CompatReport, TensorRTIncompatible, check_tensorrt_compat
from .verify import TOLERANCES, ParityError

__all__ = [
    "FORMATS", "PRECISIONS", "TOLERANCES", "CompatReport", "ExportUnavailable", "ParityError",
    "TensorRTIncompatible", "check_tensorrt_compat", "export_onnx", "export_run", "make_tensorrt_friendly",
]
