"""INT8 against fp32 on CPU: latency, each runtime alone in its own process.

    flock /tmp/effvit-timing.lock python benchmarks/int8.py

Latency: ViT-S/16 exact at 224 px, batch 1 (random weights, the shape run `effvit-bench --model`
exports), fp32 against dynamic INT8 (`quantize_dynamic`) and calibrated static QDQ INT8
(`export.precision.quantize_static_int8`: weight MatMul/Gemm/Conv in int8, LayerNorm, Softmax and
GELU in float) on ONNX Runtime, and fp32 against the static INT8 graph on OpenVINO (which runs
the QDQ MatMuls in int8). The shape run has no images, so its static graph is calibrated on
random images: latency depends on the graph, not on the calibration ranges. Top-1 of the same recipe
on trained runs: benchmarks/int8_accuracy.py. Timing as in
benchmarks/onnx_vs_torch.py: one fresh process per (runtime, graph), round-robin rounds, median
over all calls. Writes benchmarks/results/int8.md and .json (command, machine, commit, date).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_vs_torch import MODEL, _stats, run_job  # noqa: E402

VARIANTS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "int8-static"),
            ("openvino", "fp32"), ("openvino", "int8-static"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--passive", action="store_true", help="idle threads sleep (shared hosts)")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results/cpu-bound-2026-11-25/cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8.md"))
    args = parser.parse_args(argv)

    from effvit_deploy.atomic import write_json, write_text
    from effvit_deploy.bench.shapes import shape_runs
    from effvit_deploy.environment import environment
    from effvit_deploy.export.onnx import INPUT_NAME
    from effvit_deploy.export.precision import quantize_int8, quantize_static_int8

    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="effvit-int8-"))
    exact = shape_runs(MODEL, ["exact"], args.cache, formats=("onnx",), min_res=224, max_res=1024, max_batch=2)[0]
    fp32 = exact / "export" / "model.onnx"
    subjects: dict[str, dict[str, Path]] = {f"{MODEL} (random weights)": {"fp32": fp32}}
    quantize_int8(fp32, tmp / "vits.int8.onnx")
    calibration = np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)
    quantize_static_int8(fp32, tmp / "vits.int8-static.onnx", calibration, INPUT_NAME)
    subjects[f"{MODEL} (random weights)"].update({"int8": tmp / "vits.int8.onnx", "int8-static": tmp / "vits.int8-static.onnx"})

    jobs = []
    for name, graphs in subjects.items():
        for runtime, precision in VARIANTS:
            if precision in graphs:
                jobs.append({"what": "model", "runtime": runtime, "subject": name, "precision": precision,
                             "size": args.size, "threads": args.threads, "onnx": str(graphs[precision]),
                             "run_dir": "", "tmp": str(tmp), "warmup": 3, "repeats": args.repeats, "passive": args.passive})
    times: dict[tuple, list[float]] = {}
    errors: dict[tuple, str] = {}
    for rnd in range(args.rounds):
        for job in jobs:
            key = (job["subject"], job["runtime"], job["precision"])
            got = run_job(job)
            if "error" in got:
                errors[key] = got["error"]
                print(f"round {rnd + 1}: {key} failed: {got['error']}", flush=True)
                continue
            times.setdefault(key, []).extend(got["times_s"])
            print(f"round {rnd + 1}: {key} median {np.median(times[key]) * 1e3:.1f} ms", flush=True)

    rows = []
    for (subject, runtime, precision), t in times.items():
        st = _stats(t)
        base = times.get((subject, runtime, "fp32"))
        rows.append({"subject": subject, "runtime": runtime, "precision": precision, **st,
                     "speedup_vs_fp32": (_stats(base)["median_ms"] / st["median_ms"]) if base else None})
    rows += [{"subject": s, "runtime": r, "precision": p, "error": e} for (s, r, p), e in errors.items()]
    env = environment()
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    result = {"command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "total_s": time.perf_counter() - started, "size": args.size, "threads": args.threads,
              "thread_policy": "passive" if args.passive else "each runtime's default", "rounds": args.rounds,
              "repeats": args.repeats, "environment": env, "rows": rows}
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, render(result))
    print(f"wrote {args.out} in {result['total_s'] / 60:.1f} min")
    return 0


def render(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        "# INT8 against fp32 on CPU: latency", "",
        f"Measured {result['date']} on a shared machine ({env.get('cpu_model')}, {env.get('cpu_affinity')} usable cores; other "
        "jobs were running on it: compare within this file). "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; git commit {env.get('git_commit')}.",
        f"Command: `{result['command']}` ({result['total_s'] / 60:.1f} min). {result['size']} px, batch 1, "
        f"{result['threads']} threads, thread policy: {result['thread_policy']}; {result['rounds']} round-robin rounds x "
        f"{result['repeats']} timed calls, one fresh process per runtime, graph and round; spread = (p90 - p10) / median.",
        "", "## Latency", "",
        "| subject | runtime | precision | median ms | spread | speed-up over fp32 (same runtime) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['subject']} | {r['runtime']} | {r['precision']} | failed: {r['error'][:100]} | | |")
        else:
            sp = f"{r['speedup_vs_fp32']:.2f}x" if r["speedup_vs_fp32"] else "-"
            lines.append(f"| {r['subject']} | {r['runtime']} | {r['precision']} | {r['median_ms']:.1f} | {r['spread']:.2f} | {sp} |")
    lines += ["", "Top-1 of the same int8 recipes on trained runs: int8_accuracy.md."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
