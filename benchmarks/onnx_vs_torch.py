"""CPU runtimes side by side, each timed alone in its own process, against this machine's fp32 GEMM.

    flock /tmp/effvit-timing.lock python benchmarks/onnx_vs_torch.py
    flock /tmp/effvit-timing.lock python benchmarks/onnx_vs_torch.py --attentions exact --sizes 224 --rounds 3

Runtimes: PyTorch eager, ONNX Runtime (CPU provider) on the exported graph, ONNX Runtime on that
graph after its transformer optimizer (`onnxruntime.transformers.optimizer`, model_type "vit":
LayerNorm/GELU/attention fusions, exact attention only), and OpenVINO (CPU plugin, the same
ONNX graph reshaped to the static input size, latency hint). Model: ViT-S/16 shapes with random
weights (latency does not depend on them), the graphs `effvit-bench --model` exports (cached
under --cache).

Why one process per runtime: ONNX Runtime's, OpenVINO's and PyTorch's thread pools in one
process contend (spinning pools most), so timing them together slows whichever runs next; the
earlier version of this script timed PyTorch and ONNX Runtime interleaved in one process and
overstated ONNX Runtime's lead. Each (runtime, mechanism, size) here runs in a fresh process:
load, warm up, time `--repeats` calls. `--rounds` repeats the whole set in turn (round-robin),
so slow drifts of the shared machine hit every runtime alike; the figure is the median over all
rounds' calls, the spread (p90 - p10) / median.

The roofline: a 2048^3 fp32 GEMM timed the same way in each runtime (torch.mm, an ONNX MatMul
in ONNX Runtime and in OpenVINO), in the same run; the machine's GEMM throughput is the best
of them. A model's efficiency = its FLOPs (torch.utils.flop_counter, a multiply-add = 2) per
second over that. Thread policy: every runtime's own default (idle threads spin), or `--passive`
(idle threads sleep) on a shared host; the same thread count for all. Writes benchmarks/results/onnx_vs_torch.md and .json (command, machine,
versions, git commit, date).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

GEMM_N = 2048
MODEL = "vit_small_patch16_224"
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-vit-optimized", "openvino")


def _stats(times_s: list[float]) -> dict[str, float]:
    ms = np.asarray(times_s) * 1e3
    median = float(np.median(ms))
    p10, p90 = (float(v) for v in np.percentile(ms, [10, 90]))
    return {"median_ms": median, "p10_ms": p10, "p90_ms": p90, "spread": (p90 - p10) / median, "n": int(len(ms))}


# ---------------------------------------------------------------- worker (one runtime, one process)

def _gemm_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [GEMM_N, GEMM_N]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [GEMM_N, GEMM_N])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [GEMM_N, GEMM_N])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _callable(job: dict[str, Any]):
    """(fn, info): the zero-argument call to time for this job, in this process."""
    runtime, threads, info = job["runtime"], job["threads"], {}
    if job["what"] == "gemm":
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((GEMM_N, GEMM_N), dtype=np.float32) for _ in range(2))
        path = _gemm_onnx(Path(job["tmp"]) / "gemm.onnx")
        feeds = {"a": a, "b": b}
    else:
        x = np.random.default_rng(job["size"]).standard_normal((1, 3, job["size"], job["size"]), dtype=np.float32)
        path = Path(job["onnx"])
        feeds = {"pixel_values": x}
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        if job["what"] == "gemm":
            ta, tb = torch.from_numpy(feeds["a"]), torch.from_numpy(feeds["b"])
            return (lambda: torch.mm(ta, tb)), info
        from effvit_deploy.runs import load_run

        model = load_run(job["run_dir"])[0]
        tx = torch.from_numpy(feeds["pixel_values"])

        def run_torch():
            with torch.inference_mode():
                return model(tx)

        return run_torch, info
    if runtime.startswith("onnxruntime"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        if job["passive"]:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        if job["what"] == "gemm":
            return (lambda: session.run(None, feeds)), info
        feed = {name: feeds["pixel_values"]}
        return (lambda: session.run(None, feed)), info
    import openvino as ov

    from effvit_deploy.backends import ThreadPolicy
    from effvit_deploy.backends.openvino import compile_config

    core = ov.Core()
    model = core.read_model(str(path))
    if job["what"] != "gemm":
        model.reshape({model.inputs[0].get_any_name(): [1, 3, job["size"], job["size"]]})
    # f32 explicitly: on CPUs with bf16 support the plugin otherwise computes in bf16 by default
    config = {**compile_config("fp32", ThreadPolicy(threads=threads, passive=job["passive"])), "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(model, "CPU", config)
    info["openvino_inference_precision"] = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    ops = [op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ordered_ops()]
    info["openvino_runtime_ops"] = {t: ops.count(t) for t in ("ScaledDotProductAttention", "ScaledAttn", "Subgraph", "MatMul")}
    request = compiled.create_infer_request()
    inputs = list(feeds.values())
    return (lambda: request.infer(inputs)), info


def worker(job: dict[str, Any]) -> dict[str, Any]:
    """Time the job's call; with `interleave_gemm`, alternate it with the same runtime's GEMM in
    this process, so both see the same machine load (the model's share of GEMM throughput then
    survives load that drifts between processes)."""
    calls = {"times_s": _callable(job)}
    if job.get("interleave_gemm") and job["what"] == "model":
        calls["gemm_times_s"] = _callable({**job, "what": "gemm"})
    info = calls["times_s"][1]
    for _ in range(job["warmup"]):
        for fn, _ in calls.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(job["repeats"]):
        for key, (fn, _) in calls.items():
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {**times, **info}


# ---------------------------------------------------------------- parent

def vit_optimize(src: Path, dst: Path) -> dict[str, Any]:
    """ONNX Runtime's transformer optimizer on the exported graph; which fusions it made."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type="vit", num_heads=6, hidden_size=384, opt_level=0)
    optimized.save_model_to_file(str(dst))
    return {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if job["passive"] else {})}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bound_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size and variant: its best runtime, and there its speed-up over exact, the largest
    possible (exact / attention-free bound) and its latency over the bound's."""
    ok = {(r["attention"], r["size"], r["runtime"]): r["median_ms"] for r in rows if "median_ms" in r}
    out = []
    for size in sorted({r["size"] for r in rows}):
        for att in dict.fromkeys(r["attention"] for r in rows):
            if att in ("exact", "attention-free"):
                continue
            mine = {rt: ms for (a, sz, rt), ms in ok.items() if a == att and sz == size
                    and (("exact", size, rt) in ok and ("attention-free", size, rt) in ok)}
            if not mine:
                continue
            rt = min(mine, key=mine.get)
            e, b, v = ok[("exact", size, rt)], ok[("attention-free", size, rt)], mine[rt]
            out.append({"size": size, "attention": att, "best_runtime": rt, "variant_ms": v, "exact_ms": e, "bound_ms": b,
                        "speedup": e / v, "largest_possible": e / b, "achieved": b / v, "over_bound": v / b})
    return out


def _bound_lines(rows: list[dict[str, Any]]) -> list[str]:
    table = bound_table(rows)
    if not table:
        return []
    lines = ["", "## Each variant on its best runtime, against the attention-free bound there", "",
             "The attention-free bound is the same model with token mixing removed (each token keeps its own value "
             "vector; q/k/v and output projections, MLPs and norms still run): no mechanism can be faster. Best runtime: "
             "the variant's fastest here; exact and the bound are read on that same runtime (exact's own best "
             "runtime can differ).", "",
             "| px | attention | best runtime | variant ms | exact ms | bound ms | speed-up over exact | largest possible | "
             "achieved | variant / bound | check |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        check = "faster than the bound: timing noise, re-measure" if r["over_bound"] < 1 else ""
        lines.append(f"| {r['size']} | {r['attention']} | {r['best_runtime']} | {r['variant_ms']:.0f} | {r['exact_ms']:.0f} | "
                     f"{r['bound_ms']:.0f} | {r['speedup']:.2f}x | {r['largest_possible']:.2f}x | {100 * r['achieved']:.0f}% | "
                     f"{r['over_bound']:.2f}x | {check} |")
    return lines


def _ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}x"


def render(result: dict[str, Any]) -> str:
    env, rows, gemm = result["environment"], result["rows"], result["gemm"]
    peak = result["gemm_peak_gflops"]
    lines = [
        "# CPU runtimes, each alone in its own process, against the machine's fp32 GEMM",
        "",
        f"Measured {result['date']} on a shared machine ({env.get('cpu_model')}, {env.get('cpu_affinity')} usable cores, "
        f"{env.get('memory_gib')} GiB; other jobs were running on it, so absolute figures drift: compare within this file). "
        f"torch {env.get('torch')}, onnxruntime {env.get('onnxruntime')}, openvino {result['openvino']}; "
        f"git commit {env.get('git_commit')}.",
        f"Command: `{result['command']}` ({result['total_s'] / 60:.1f} min). {result['threads']} threads per runtime; "
        f"thread policy: {result['thread_policy']}. Model "
        f"{MODEL} shapes, random weights, batch 1. {result['rounds']} round-robin rounds x {result['repeats']} timed calls "
        "after warm-up, one fresh process per runtime and round; median over all calls, spread = (p90 - p10) / median.",
        "",
        f"## fp32 GEMM roofline ({GEMM_N}^3, {2 * GEMM_N**3 / 1e9:.1f} GFLOP)",
        "",
        "| runtime | median ms | spread | GFLOP/s |",
        "|---|---|---|---|",
    ]
    for rt, g in gemm.items():
        lines.append(f"| {rt} | {g['median_ms']:.1f} | {g['spread']:.2f} | {g['gflops']:.0f} |" if "median_ms" in g
                     else f"| {rt} | failed: {g['error']} | | |")
    lines += ["", f"Machine fp32 GEMM throughput (best of the above): **{peak:.0f} GFLOP/s**.", "",
              "## Whole model", "",
              "| attention | px | runtime | median ms | spread | GFLOP | GFLOP/s | % of GEMM | % of own GEMM timed "
              "alongside (GFLOP/s) | vs PyTorch eager | notes |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "median_ms" not in r:
            lines.append(f"| {r['attention']} | {r['size']} | {r['runtime']} | failed | | | | | | {r['error'][:120]} |")
            continue
        beside = (f"{100 * r['fraction_of_interleaved_gemm']:.0f}% of {r['gemm_interleaved_gflops']:.0f}"
                  if "fraction_of_interleaved_gemm" in r else "-")
        lines.append(f"| {r['attention']} | {r['size']} | {r['runtime']} | {r['median_ms']:.1f} | {r['spread']:.2f} | "
                     f"{r['gflop']:.2f} | {r['gflops']:.0f} | {100 * r['gflops'] / peak:.0f}% | {beside} | "
                     f"{_ratio(r['speedup_vs_torch'])} | {r.get('notes', '')} |")
    lines += _bound_lines(rows)
    best = result.get("best_224_exact")
    if best:
        lines += ["", f"Best runtime for exact ViT-S/16 at 224 px, batch 1: **{best['runtime']}**, "
                      f"{best['median_ms']:.1f} ms = {best['gflops']:.0f} GFLOP/s = **{100 * best['fraction_of_gemm']:.0f}%** "
                      f"of the best fp32 GEMM throughput measured in the same run"
                  + (f"; **{100 * best['fraction_of_interleaved_gemm']:.0f}%** of its own GEMM timed call by call "
                     "alongside it in the same process (the load-robust figure)." if best.get("fraction_of_interleaved_gemm")
                     else ".")]
    lines += ["", "% of GEMM: against the best GEMM above, timed in separate processes, so machine load that "
                  "drifts between processes moves it (figures above 100% mean the GEMM ran under heavier load than "
                  "the model). % of own GEMM: against the same runtime's GEMM alternated call by call with the model "
                  "in one process, which both see under the same load."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--attentions", default="exact,linformer,performer,nystrom,atrous,attention-free",
                        help="mechanisms, and attention-free: the same model with token mixing removed (bench.bound)")
    parser.add_argument("--sizes", default="224,1024")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES))
    parser.add_argument("--repeats", default="20,3", help="timed calls per process, per size in --sizes order")
    parser.add_argument("--rounds", type=int, default=2, help="round-robin rounds (one process per runtime each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--interleave-gemm", action="store_true", help="also time the runtime's own 2048^3 GEMM in "
                        "each model process, alternating call by call: a load-robust share of GEMM throughput")
    parser.add_argument("--passive", action="store_true", help="idle threads sleep instead of spinning "
                        "(OMP_WAIT_POLICY=PASSIVE for PyTorch, allow_spinning=0 for ONNX Runtime): for shared hosts")
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/results/cpu-bound-2026-11-25/cache"),
                        help="shape runs and their ONNX exports (made when missing)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/onnx_vs_torch.md"))
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import torch

    from effvit_deploy.atomic import write_json, write_text
    from effvit_deploy.bench.bound import BOUND, bound_run
    from effvit_deploy.bench.shapes import shape_runs
    from effvit_deploy.environment import environment
    from effvit_deploy.export.format import tool_versions
    from effvit_deploy.flops import count_flops
    from effvit_deploy.runs import load_model_card

    started = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    repeats = dict(zip(sizes, (int(r) for r in args.repeats.split(","))))
    attentions, runtimes = args.attentions.split(","), args.runtimes.split(",")
    variants = [a for a in attentions if a != BOUND]
    runs = dict(zip(variants, shape_runs(MODEL, variants, args.cache, formats=("onnx",), min_res=min(sizes), max_res=max(sizes), max_batch=2)))
    if BOUND in attentions:
        exact = runs["exact"] if "exact" in runs else shape_runs(MODEL, ["exact"], args.cache)[0]
        runs[BOUND] = bound_run(exact, args.cache, formats=("onnx",), min_res=min(sizes), max_res=max(sizes), max_batch=2)
    tmp = Path(tempfile.mkdtemp(prefix="effvit-runtimes-"))
    notes: dict[str, str] = {}
    optimized: dict[str, Path] = {}
    for att in attentions if "onnxruntime-vit-optimized" in runtimes else []:
        try:
            fused = vit_optimize(runs[att] / "export" / "model.onnx", tmp / f"{att}.vit-opt.onnx")
            optimized[att] = tmp / f"{att}.vit-opt.onnx"
            notes[att] = "fused: " + (", ".join(f"{k} {v}" for k, v in fused.items()) or "nothing")
        except Exception as exc:  # recorded: the optimizer may not read every exported graph
            notes[att] = f"optimizer failed: {type(exc).__name__}: {exc}"[:200]

    jobs: list[dict[str, Any]] = [{"what": "gemm", "runtime": rt, "threads": args.threads, "tmp": str(tmp),
                                   "warmup": 2, "repeats": 10, "passive": args.passive} for rt in ("torch", "onnxruntime", "openvino") if rt in runtimes or rt == "torch"]
    for att in attentions:
        for size in sizes:
            for rt in runtimes:
                if rt == "onnxruntime-vit-optimized" and att not in optimized:
                    continue
                onnx_path = optimized[att] if rt == "onnxruntime-vit-optimized" else runs[att] / "export" / "model.onnx"
                jobs.append({"what": "model", "runtime": rt, "attention": att, "size": size, "threads": args.threads,
                             "run_dir": str(runs[att]), "onnx": str(onnx_path), "tmp": str(tmp),
                             "warmup": 3 if size <= 384 else 1, "repeats": repeats[size], "passive": args.passive,
                             "interleave_gemm": args.interleave_gemm})
    times: dict[tuple, list[float]] = {}
    gemm_beside: dict[tuple, list[float]] = {}
    extra: dict[tuple, dict] = {}
    for rnd in range(args.rounds):
        for job in jobs:
            key = (job["what"], job["runtime"], job.get("attention"), job.get("size"))
            got = run_job(job)
            if "error" in got:
                extra[key] = {"error": got["error"]}
                print(f"round {rnd + 1}: {key} failed: {got['error']}", flush=True)
                continue
            times.setdefault(key, []).extend(got.pop("times_s"))
            gemm_beside.setdefault(key, []).extend(got.pop("gemm_times_s", []))
            extra.setdefault(key, {}).update(got)
            print(f"round {rnd + 1}: {key} median {np.median(times[key]) * 1e3:.1f} ms", flush=True)

    gemm = {}
    for rt in ("torch", "onnxruntime", "openvino"):
        key = ("gemm", rt, None, None)
        if key in times:
            st = _stats(times[key])
            gemm[rt] = {**st, "gflops": 2 * GEMM_N**3 / (st["median_ms"] / 1e3) / 1e9}
        elif key in extra:
            gemm[rt] = extra[key]
    peak = max(g["gflops"] for g in gemm.values() if "gflops" in g)
    flops = {(att, size): count_flops(load_model_card(runs[att]).build(), size) / 1e9
             for att in attentions for size in sizes}
    rows = []
    for att in attentions:
        for size in sizes:
            torch_key = ("model", "torch", att, size)
            torch_ms = _stats(times[torch_key])["median_ms"] if torch_key in times else None
            for rt in runtimes:
                key = ("model", rt, att, size)
                row: dict[str, Any] = {"attention": att, "size": size, "runtime": rt, **extra.get(key, {})}
                if key in times:
                    st = _stats(times[key])
                    row.update(st, gflop=flops[(att, size)], gflops=flops[(att, size)] / (st["median_ms"] / 1e3),
                               speedup_vs_torch=(torch_ms / st["median_ms"]) if torch_ms else float("nan"))
                    if gemm_beside.get(key):
                        own = 2 * GEMM_N**3 / (_stats(gemm_beside[key])["median_ms"] / 1e3) / 1e9
                        row.update(gemm_interleaved_gflops=own, fraction_of_interleaved_gemm=row["gflops"] / own)
                    if rt == "onnxruntime-vit-optimized":
                        row["notes"] = notes[att]
                    if "openvino_runtime_ops" in row:
                        row["notes"] = f"static {size}x{size}, {row.get('openvino_inference_precision')}; runtime graph: " + ", ".join(
                            f"{k} {v}" for k, v in row["openvino_runtime_ops"].items())
                elif key not in extra:
                    continue
                rows.append(row)
    exact224 = [r for r in rows if r["attention"] == "exact" and r["size"] == 224 and "median_ms" in r]
    best = min(exact224, key=lambda r: r["median_ms"], default=None)
    command = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    result = {
        "command": command, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_s": time.perf_counter() - started, "threads": args.threads,
        "thread_policy": ("passive (idle threads sleep: OMP_WAIT_POLICY=PASSIVE, ONNX Runtime allow_spinning=0; "
                          "OpenVINO CPU pinning off)") if args.passive else "each runtime's default (idle threads spin)", "rounds": args.rounds,
        "repeats": args.repeats, "environment": environment(), "openvino": tool_versions("openvino").get("openvino"),
        "torch_threads_default": torch.get_num_threads(), "gemm": gemm, "gemm_peak_gflops": peak, "rows": rows,
        "bound": bound_table(rows),
        "best_224_exact": None if best is None else {"runtime": best["runtime"], "median_ms": best["median_ms"],
                                                      "gflops": best["gflops"], "fraction_of_gemm": best["gflops"] / peak,
                                                      "fraction_of_interleaved_gemm": best.get("fraction_of_interleaved_gemm")},
    }
    write_json(args.out.with_suffix(".json"), result)
    write_text(args.out, render(result))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')} in {result['total_s'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
