"""ONNX Runtime (CPU) vs PyTorch eager, batch 1, for every attention mechanism at ViT-S/16 shapes.

    python benchmarks/onnx_vs_torch.py
    python benchmarks/onnx_vs_torch.py --attentions exact,performer --sizes 224 --repeats 30

Random weights (latency does not depend on them). Each mechanism is exported once
(`effvit_deploy.export.onnx.export_onnx`, dynamic batch/H/W, then the export pipeline's exact
TensorRT-friendly rewrites and onnxslim) and the same graph serves both sizes. Per size the two
backends are timed interleaved (torch, ort, torch, ort, ...) after warm-up, with the same thread
count, so machine noise hits both alike; reported: median, p90 and spread ((p90 - p10) / median)
per backend, and the speed-up torch median / ORT median. Outputs are checked to agree first.

The exports (slow, untimed) run first; the timed part then holds /tmp/effvit-bench.lock (the
shared machine's benchmark lock, as `flock` would) so no other benchmark runs at the same time.
Writes benchmarks/results/onnx_vs_torch.md and .json with machine, versions and git commit.
"""
from __future__ import annotations

import argparse
import fcntl
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from effvit_deploy import ATTENTIONS, build_model
from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.environment import environment
from effvit_deploy.export.onnx import export_onnx, make_tensorrt_friendly, slim_onnx

MODEL = "vit_small_patch16_224"
LOCK = "/tmp/effvit-bench.lock"


def _stats(times: list[float]) -> dict[str, float]:
    ms = np.asarray(times) * 1e3
    median = float(np.median(ms))
    p10, p90 = (float(v) for v in np.percentile(ms, [10, 90]))
    return {"median_ms": median, "p90_ms": p90, "p10_ms": p10, "spread": (p90 - p10) / median, "n": len(ms)}


def prepare(attention: str, max_res: int, workdir: Path) -> tuple[torch.nn.Module, Path, float]:
    """The random-weight ViT-S model and its exported graph (as effvit-export writes it)."""
    torch.manual_seed(0)
    model = build_model(MODEL, attention=attention, num_classes=1000).eval()
    path = workdir / f"{attention}.onnx"
    started = time.perf_counter()
    export_onnx(model, path, sample_size=(224, 224), max_batch=8, max_res=max_res)
    make_tensorrt_friendly(path, 224, 224)
    slim_onnx(path, path)
    print(f"exported {attention} in {time.perf_counter() - started:.0f} s", flush=True)
    return model, path, time.perf_counter() - started


def measure(attention: str, model: torch.nn.Module, path: Path, export_s: float, sizes: list[int],
            repeats: dict[int, int], threads: int) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for size in sizes:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        feed = {name: x.numpy()}

        def run_torch():
            with torch.inference_mode():
                return model(x)

        def run_ort():
            return session.run(None, feed)[0]

        max_abs = float(np.abs(run_torch().numpy() - run_ort()).max())
        for _ in range(1 if size >= 512 else 5):
            run_torch(), run_ort()
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for _ in range(repeats[size]):
            for backend, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
                t0 = time.perf_counter()
                fn()
                times[backend].append(time.perf_counter() - t0)
        torch_s, ort_s = _stats(times["torch"]), _stats(times["onnxruntime"])
        row = {"attention": attention, "size": size, "batch": 1, "threads": threads, "export_s": export_s,
               "max_abs_logit_diff": max_abs, "torch": torch_s, "onnxruntime": ort_s,
               "speedup": torch_s["median_ms"] / ort_s["median_ms"]}
        print(f"{attention:10s} {size:5d}: torch {torch_s['median_ms']:9.1f} ms, ORT {ort_s['median_ms']:9.1f} ms, "
              f"speed-up {row['speedup']:.2f}x (max |diff| {max_abs:.1e})", flush=True)
        rows.append(row)
    return rows


def render(rows: list[dict], env: dict, command: str, total_s: float, timed_s: float) -> str:
    lines = [
        "# ONNX Runtime (CPU) vs PyTorch eager, batch 1",
        "",
        f"Model {MODEL} shapes (random weights), every attention mechanism, one dynamic ONNX graph per mechanism.",
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_affinity')} usable cores, {env.get('memory_gib')} GiB; "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}; git commit {env.get('git_commit')}.",
        f"Command: `{command}` ({total_s / 60:.1f} min, of which {timed_s / 60:.1f} timed under the benchmark lock). "
        f"Threads per backend: {rows[0]['threads'] if rows else '-'}. Interleaved repeats after warm-up; "
        "spread = (p90 - p10) / median.",
        "",
        "| attention | size | PyTorch median ms | p90 | spread | ORT median ms | p90 | spread | speed-up (torch/ORT) | max abs logit diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t, o = r["torch"], r["onnxruntime"]
        lines.append(f"| {r['attention']} | {r['size']} | {t['median_ms']:.1f} | {t['p90_ms']:.1f} | {t['spread']:.2f} | "
                     f"{o['median_ms']:.1f} | {o['p90_ms']:.1f} | {o['spread']:.2f} | {r['speedup']:.2f}x | {r['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attentions", default=",".join(sorted(ATTENTIONS)))
    parser.add_argument("--sizes", default="224,1024")
    parser.add_argument("--repeats", default="25,3", help="repeats per size, in --sizes order")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_vs_torch.md"))
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = dict(zip(sizes, (int(r) for r in args.repeats.split(","))))
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {a: prepare(a, max(sizes), Path(tmp)) for a in args.attentions.split(",")}
        with open(LOCK, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            timed_from = time.perf_counter()
            for attention, (model, path, export_s) in prepared.items():
                rows += measure(attention, model, path, export_s, sizes, repeats, args.threads)
            timed_s = time.perf_counter() - timed_from
    total_s = time.perf_counter() - started
    env = environment()
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    write_json(args.out.with_suffix(".json"), {"command": command, "total_s": total_s, "timed_s": timed_s,
                                               "environment": env, "rows": rows})
    write_text(args.out, render(rows, env, command, total_s, timed_s))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} in {total_s / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
