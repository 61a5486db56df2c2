"""Stage 2: lower trained models to ONNX, TensorRT and Torch-TensorRT, and verify them.

    from effvit_deploy.export import export_run
    manifest = export_run("runs/digits-exact", formats=("onnx",), precisions=("fp32", "fp16"), int8=True)

Every artifact, including those of the benchmark's attention-free bound (a run directory of the
reference mechanism "attention-free"), is built and verified by `export_run`. GPU toolchains
(tensorrt, torch_tensorrt) are imported only when their format is requested.
"""
from .run import FORMATS, PRECISIONS, ExportUnavailable, export_run
from .trt_compat import CompatReport, TensorRTIncompatible, check_tensorrt_compat
from .verify import TOLERANCES, ParityError

__all__ = [
    "FORMATS", "PRECISIONS", "TOLERANCES", "CompatReport", "ExportUnavailable", "ParityError",
    "TensorRTIncompatible", "check_tensorrt_compat", "export_run",
]
