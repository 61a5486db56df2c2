"""OpenVINO vs ONNX Runtime vs PyTorch on trained runs, with the position embedding resampled by
ONNX `Resize` (timm's `F.interpolate` as exported) and by the matrix formulation the exporter uses.

    python benchmarks/openvino_parity.py runs/digits-*

For each run, the fp32 model is exported twice (`export_onnx` as shipped, and with the
exporter's `portable_resampling` switched off), and each graph is run on ONNX Runtime and
OpenVINO at the training size and at other sizes; reported: relative max logit error
(max |a - b| / max |reference|) of OpenVINO against ONNX Runtime and of both against PyTorch fp32
eager, on seeded random inputs. Writes benchmarks/results/openvino_parity.{md,json} with command,
machine and git commit.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.backends import ort_session
from effvit_deploy.backends.openvino import compiled_runner
from effvit_deploy.environment import environment
from effvit_deploy.export import onnx as onnx_export
from effvit_deploy.runs import load_run

RESULTS = Path(__file__).parent / "results"


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def measure(run_dir: Path, work: Path) -> list[dict]:
    model, card = load_run(run_dir)
    img, patch = card.img_size, card.patch_size
    sizes = [(img, img), (img, img + 2 * patch), (2 * img, 2 * img)]
    rows = []
    for graph in ("Resize (timm as exported)", "matrices (export_onnx)"):
        path = work / f"{run_dir.name}-{'resize' if graph.startswith('Resize') else 'matrix'}.onnx"
        patch_ctx = (mock.patch.object(onnx_export, "portable_resampling", contextlib.nullcontext)
                     if graph.startswith("Resize") else contextlib.nullcontext())
        with patch_ctx:
            onnx_export.export_onnx(model, path, sample_size=(img, img), max_batch=4, max_res=4 * img)
        session, ov = ort_session(path), compiled_runner(path, "fp32", card)
        for hw in sizes:
            x = torch.randn(4, 3, *hw, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                ref = model(x).numpy()
            ort_out = session.run(None, {"pixel_values": x.numpy()})[0]
            ov_out = ov(x.numpy())
            rows.append({"run": run_dir.name, "graph": graph, "size": f"{hw[0]}x{hw[1]}", "train_size": hw == (img, img),
                         "openvino_vs_onnxruntime": _rel(ov_out, ort_out), "onnxruntime_vs_torch": _rel(ort_out, ref),
                         "openvino_vs_torch": _rel(ov_out, ref)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for run in args.runs for row in measure(run, Path(tmp))]
    env = environment()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    lines = ["# OpenVINO parity: position-embedding resampling as Resize vs as matrices", "",
             f"Command: `{command}`", "",
             f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores (shared with other jobs); no GPU. "
             f"Commit {env['git_commit']}, onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, "
             f"torch {env['torch']}. Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", "",
             "Relative max logit error (max |a - b| / max |b|), batch of 4 seeded random inputs; the first size",
             "is the training size (no resampling needed there).", "",
             "| run | graph | size | OpenVINO vs ONNX Runtime | ONNX Runtime vs PyTorch | OpenVINO vs PyTorch |",
             "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['graph']} | {r['size']} | {r['openvino_vs_onnxruntime']:.1e} | "
              f"{r['onnxruntime_vs_torch']:.1e} | {r['openvino_vs_torch']:.1e} |" for r in rows]
    write_json(RESULTS / "openvino_parity.json", {"command": command, "environment": env, "rows": rows})
    write_text(RESULTS / "openvino_parity.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
