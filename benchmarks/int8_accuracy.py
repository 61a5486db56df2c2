"""Calibrated static int8 vs dynamic int8 vs fp32 on the CPU backends: top-1 of every artifact.

    python benchmarks/int8_accuracy.py runs/digits-*

Exports each run with `effvit-export --formats onnx,openvino --int8` (fp32, dynamic int8, static
int8 calibrated on the run's training images, OpenVINO fp32 and static int8), and reads from the
manifest each artifact's top-1 on the validation subset and its delta to PyTorch fp32. Writes
benchmarks/results/int8_accuracy.{md,json} with command, machine and git commit. Latency of the
same graphs: benchmarks/int8.py.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.environment import environment

RESULTS = Path(__file__).parent / "results"


def _command() -> str:
    return "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def _header(title: str, env: dict) -> list[str]:
    return [f"# {title}", "", f"Command: `{_command()}`", "",
            f"Machine: {env['cpu_model']}, {env['cpu_cores']} cores (shared with other jobs), "
            f"{env['memory_gib']} GiB; no GPU. Commit {env['git_commit']}, "
            f"onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, torch {env['torch']}.",
            f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]


def accuracy(run_dirs: list[Path], out: Path) -> None:
    from effvit_deploy.export import export_run

    rows = []
    for run in run_dirs:
        manifest = export_run(run, formats=("onnx", "openvino"), precisions=("fp32",), int8=True, max_res=64)
        for a in manifest["artifacts"]:
            acc = a.get("accuracy") or {}
            rows.append({"run": manifest["run"], "attention": manifest["attention"], "format": a["format"],
                         "precision": a["precision"], "top1": acc.get("top1"), "torch_top1": acc.get("torch_top1"),
                         "delta_points": None if acc.get("top1") is None else 100 * acc["top1_delta_vs_torch"],
                         "agreement": acc.get("top1_agreement_vs_torch"), "n": acc.get("n")})
    env = environment()
    lines = _header("int8 accuracy on the digits runs", env) + [
        "Top-1 on the validation set of each run, per artifact, and its delta to PyTorch fp32 in points",
        "(static int8: calibrated on 64 training images, weight MatMul/Gemm/Conv inputs int8; LayerNorm, Softmax, GELU float).",
        "", "| run | format | precision | top-1 | PyTorch fp32 | delta (points) | agreement | images |",
        "|---|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['run']} | {r['format']} | {r['precision']} | {r['top1']:.4f} | {r['torch_top1']:.4f} | "
              f"{r['delta_points']:+.2f} | {r['agreement']:.4f} | {r['n']} |" for r in rows if r["top1"] is not None]
    write_json(out.with_suffix(".json"), {"command": _command(), "environment": env, "rows": rows})
    write_text(out, "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args()
    accuracy(args.runs, RESULTS / "int8_accuracy.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
