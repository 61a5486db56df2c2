"""The "openvino" format: an OpenVINO IR (xml + bin) converted from the verified ONNX graph of
the same precision (OpenVINO docs, "Model preparation"), run and verified by the "openvino"
backend (effvit_deploy/backends/openvino.py)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path
from ..backends import file_sha256
from .format import Format, tool_versions

if TYPE_CHECKING:
    from .run import Exporter

WORK_PREFIX = ".openvino."  # + PID + "." + random: the conversion's work folder (run.remove_stale_work)


def build(exporter: "Exporter", precision: str) -> dict[str, Any]:
    """model[.PRECISION].openvino.xml and its .bin, from the ONNX artifact of `precision`."""
    import openvino as ov

    export_dir = exporter.export_dir
    onnx_entry = exporter.entries[("onnx", precision)]
    stem = "model.openvino" if precision == "fp32" else f"model.{precision}.openvino"
    final, final_bin = export_dir / f"{stem}.xml", export_dir / f"{stem}.bin"
    label = exporter.label("OpenVINO", precision)
    with tempfile.TemporaryDirectory(dir=export_dir, prefix=f"{WORK_PREFIX}{os.getpid()}.") as work:
        xml = Path(work) / f"{stem}.xml"
        ov.save_model(ov.convert_model(export_dir / onnx_entry["path"]), xml, compress_to_fp16=False)
        runner = exporter.runner("openvino", xml, {"format": "openvino", "precision": precision})
        extra = {**exporter.verify_artifact(runner, precision, label), "onnx": onnx_entry["path"],
                 "tool_versions": tool_versions()}
        del runner
        bin_sha, bin_bytes = file_sha256(xml.with_suffix(".bin")), xml.with_suffix(".bin").stat().st_size
        with atomic_path(final_bin) as tmp_bin:
            os.replace(xml.with_suffix(".bin"), tmp_bin)
        extra["weights_file"] = {"path": final_bin.name, "sha256": bin_sha, "bytes": bin_bytes}
        with atomic_path(final) as tmp:
            os.replace(xml, tmp)
            entry = exporter.record("openvino", precision, final, tmp, extra)
    entry["bytes"] += bin_bytes  # the artifact is the xml and its weights
    return entry


OPENVINO = Format("openvino", "openvino", build, sources=lambda precision: [("onnx", "fp32"), ("onnx", precision)],
                  stamp=lambda: {"toolchain": tool_versions()})
