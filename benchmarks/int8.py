"""Calibrated static int8 vs dynamic int8 vs fp32 on the CPU backends: accuracy and latency.

    python benchmarks/int8.py accuracy runs/digits-*          # export + top-1 of each artifact
    flock /tmp/effvit-timing.lock python benchmarks/int8.py latency --rounds 2 --repeats 25

accuracy: exports each run with `effvit-export --formats onnx,openvino --int8` (fp32, dynamic
int8, static int8 calibrated on the run's training images, OpenVINO fp32 and static int8), and
reads from the manifest each artifact's top-1 on the validation set and its delta to PyTorch fp32.

latency: ViT-S/16 at 224 px, batch 1, random weights (latency does not depend on them; the
static graph is calibrated on synthetic images). Every (backend, precision) is timed in its own
fresh process (`--one`), in interleaved rounds, with each runtime's default thread policy;
reported: median, spread ((p90 - p10) / median) and the speed-up over the same runtime's fp32,
all from one run. Writes benchmarks/results/int8_{accuracy,latency}.{md,json} with command,
machine and git commit.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.environment import environment

RESULTS = Path(__file__).parent / "results"
PRECISIONS = ("fp32", "int8", "int8-static")
CONFIGS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "int8-static"),
           ("openvino", "fp32"), ("openvino", "int8-static")]


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


def _time_one(run: Path, backend: str, precision: str, warmup: int, repeats: int) -> dict:
    from effvit_deploy.backends import load_runner

    runner = load_runner(run, backend, precision)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    feed = runner.prepare(x)
    for _ in range(warmup):
        runner.run(feed)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(feed)
        times.append(time.perf_counter() - start)
    return {"times_ms": [t * 1e3 for t in times], "threads": runner.threads}


def _make_vits_run(root: Path) -> Path:
    from effvit_deploy import build_model
    from effvit_deploy.export import export_run
    from effvit_deploy.runs import ModelCard, write_run

    model = build_model("vit_small_patch16_224", attention="exact", num_classes=10)
    data = {"name": "synthetic", "num_classes": 10, "train_size": 64, "val_size": 16, "seed": 0}
    card = ModelCard.for_model(model, img_size=224, class_names=[str(i) for i in range(10)], data=data)
    run = write_run(root / "vits-exact", model, card, {"attention": "exact"})
    export_run(run, formats=("onnx", "openvino"), precisions=("fp32",), int8=True, max_res=224, max_batch=1, eval_limit=0)
    return run


def latency(out: Path, rounds: int, warmup: int, repeats: int, workdir: Path) -> None:
    run = workdir / "vits-exact"
    if not (run / "export" / "manifest.json").is_file():
        run = _make_vits_run(workdir)
    samples: dict[tuple[str, str], list[float]] = {c: [] for c in CONFIGS}
    threads: dict[tuple[str, str], dict] = {}
    for _ in range(rounds):
        for backend, precision in CONFIGS:
            proc = subprocess.run([sys.executable, __file__, "one", str(run), backend, precision, str(warmup), str(repeats)],
                                  capture_output=True, text=True, check=True)
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            samples[(backend, precision)] += result["times_ms"]
            threads[(backend, precision)] = result["threads"]
    rows = []
    for (backend, precision), ms in samples.items():
        a = np.asarray(ms)
        p10, median, p90 = np.percentile(a, [10, 50, 90])
        rows.append({"backend": backend, "precision": precision, "median_ms": float(median),
                     "spread": float((p90 - p10) / median), "n": len(ms), "threads": threads[(backend, precision)]})
    fp32 = {r["backend"]: r["median_ms"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        r["speedup_vs_fp32"] = fp32[r["backend"]] / r["median_ms"]
    env = environment()
    lines = _header("int8 latency, ViT-S/16, 224 px, batch 1", env) + [
        f"Each configuration in its own process, {rounds} interleaved rounds x {repeats} runs after {warmup} warm-up;",
        "each runtime's default thread policy (ONNX Runtime: one thread per physical core, spinning; OpenVINO:",
        "LATENCY hint). Speed-up: the same runtime's fp32 median / this median.", "",
        "| backend | precision | median ms | spread | speed-up vs fp32 | runs |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['precision']} | {r['median_ms']:.1f} | {r['spread']:.2f} | "
              f"{r['speedup_vs_fp32']:.2f}x | {r['n']} |" for r in rows]
    write_json(out.with_suffix(".json"), {"command": _command(), "environment": env, "rows": rows})
    write_text(out, "\n".join(lines) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("accuracy")
    a.add_argument("runs", nargs="+", type=Path)
    lat = sub.add_parser("latency")
    lat.add_argument("--rounds", type=int, default=2)
    lat.add_argument("--warmup", type=int, default=5)
    lat.add_argument("--repeats", type=int, default=25)
    lat.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "effvit-int8-bench")
    one = sub.add_parser("one")
    for name in ("run", "backend", "precision", "warmup", "repeats"):
        one.add_argument(name)
    args = p.parse_args()
    if args.mode == "accuracy":
        accuracy(args.runs, RESULTS / "int8_accuracy.md")
    elif args.mode == "latency":
        latency(RESULTS / "int8_latency.md", args.rounds, args.warmup, args.repeats, args.workdir)
    else:
        print(json.dumps(_time_one(Path(args.run), args.backend, args.precision, int(args.warmup), int(args.repeats))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
