"""The project's GPU check, one kind of sweep per call; benchmarks/gpu_check.sh runs them in order.

    python benchmarks/gpu_check.py KIND --out RESULTS [--cpu-smoke] [--command TEXT]

Every mechanism plus the attention-free bound (`effvit_deploy.bench.bound`), ViT-S/16 (100
classes, untrained: timing depends on shapes only), each kind one in-process sweep (a process per
configuration costs seconds on a GPU host) through the library's own sweeps, so what is timed
here is what `effvit-bench` times:

    infer-b64-bf16       effvit-bench --backends torch --precision bf16, batch 64, 224-2048 px
    train-b64-bf16       effvit-bench --train-step --precision bf16 (autocast), batch 64, 224-1024 px
    infer-b1-bf16        the same inference, batch 1 (launch-bound on a large GPU)
    infer-b1-cudagraphs  backend torch-compile-cudagraphs (torch.compile mode="reduce-overhead"), batch 1
    infer-b64-fp32       fp32 (no TF32), batch 64, 224 and 1024 px
    summary              report.md (plots) of the inference rows; refreshes summary.md/.json

Rows go to RESULTS/results.jsonl (inference) and RESULTS/train_step.jsonl (training). After every
kind, RESULTS/summary.md and summary.json are rewritten from whatever rows exist: latency over the
attention-free bound per mechanism and size (as the issue reads it), peak memory over exact's,
training ms/step and epoch time, and the GPU targets met or not. A configuration that runs out
of memory is recorded as "oom" and the sweep goes on (larger sizes of that subject are skipped).

`--cpu-smoke` runs the identical code on CPU at tiny sizes (2-block ViT-Tiny width, 64 and 96
px, batch 4, mechanism settings that fit a 4x4 to 6x6 patch grid) in well under a minute: the
CUDA-graph kind records its refusal ("skipped": no GPU) instead of timing. Its timings are CPU
figures of a toy model, evidence only that the path works, never a GPU figure.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from effvit_deploy.atomic import write_json, write_text
from effvit_deploy.attention import ATTENTIONS as MECHANISMS
from effvit_deploy.bench.bound import BOUND
from effvit_deploy.bench.results import load_results
from effvit_deploy.bench.train_step import TRAIN_STEP, train_tables

FULL = {
    "model": "vit_small_patch16_224", "build_kwargs": {}, "batch": 64,
    "infer_res": [224, 384, 512, 768, 1024, 1536, 2048], "train_res": [224, 384, 512, 1024],
    "cudagraphs_res": [1024], "fp32_res": [224, 1024], "target_res": [1024, 2048], "train_target_res": 1024,
    "warmup": 2, "repeats": 10, "max_time_s": 2.0, "train_warmup": 2, "train_repeats": 5,
}
SMOKE = {
    "model": "vit_tiny_patch16_224", "batch": 4,
    "build_kwargs": {"*": {"depth": 2}, **{name: dict(mechanism.tiny_settings)  # the class facts the tests use
                                           for name, mechanism in MECHANISMS.items() if mechanism.tiny_settings}},
    "infer_res": [64, 96], "train_res": [64, 96], "cudagraphs_res": [64], "fp32_res": [64],
    "target_res": [96], "train_target_res": 96,
    "warmup": 1, "repeats": 3, "max_time_s": 1.0, "train_warmup": 1, "train_repeats": 2,
}
NUM_CLASSES = 100
ATTENTIONS = ("exact", "linformer", "performer", "nystrom", "atrous")
# Issue targets: latency / bound at the large sizes, batch-1 CUDA graphs / bound.
LATENCY_OVER_BOUND_MAX, CUDAGRAPHS_OVER_BOUND_MAX = 1.5, 2.0


def _runs(plan: dict[str, Any], out: Path) -> list[Path]:
    """The attention-free bound's run, then exact's, then the other variants': a step cut short by
    its timeout still has the two every ratio is read against."""
    from effvit_deploy.bench.matrix import bound_subjects
    from effvit_deploy.bench.shapes import shape_runs

    runs = shape_runs(plan["model"], ATTENTIONS, out / "cache", num_classes=NUM_CLASSES,
                      build_kwargs=plan["build_kwargs"])
    return bound_subjects(runs, out / "cache", plan["infer_res"], plan["batch"]) + runs


def _infer(backend: str, precision: str, batch: Callable[[dict], int], res_key: str, warmup: Optional[int] = None):
    """An inference sweep; `warmup` overrides the plan's (CUDA graphs: compile, record, then replay)."""
    def sweep(plan: dict[str, Any], out: Path) -> None:
        from effvit_deploy.bench import run_benchmark

        run_benchmark(_runs(plan, out), [backend], plan[res_key], [batch(plan)], [precision], out,
                      warmup=warmup or plan["warmup"], repeats=plan["repeats"], max_time_s=plan["max_time_s"],
                      accuracy=False, isolate=False, bound=False, progress=False)

    return sweep


def _train(plan: dict[str, Any], out: Path) -> None:
    from effvit_deploy.bench.train_step import train_step_sweep

    train_step_sweep(_runs(plan, out), plan["train_res"], [plan["batch"]], ["bf16"], out, bound=False,
                     warmup=plan["train_warmup"], repeats=plan["train_repeats"], max_time_s=plan["max_time_s"],
                     progress=False)


def _report(plan: dict[str, Any], out: Path) -> None:
    from effvit_deploy.bench import write_report

    if (out / "results.jsonl").is_file():
        write_report(out / "results.jsonl", out)


KINDS: dict[str, Callable[[dict, Path], None]] = {
    "infer-b64-bf16": _infer("torch", "bf16", lambda p: p["batch"], "infer_res"),
    "train-b64-bf16": _train,
    "infer-b1-bf16": _infer("torch", "bf16", lambda p: 1, "infer_res"),
    "infer-b1-cudagraphs": _infer("torch-compile-cudagraphs", "bf16", lambda p: 1, "cudagraphs_res", warmup=3),
    "infer-b64-fp32": _infer("torch", "fp32", lambda p: p["batch"], "fp32_res"),
    "summary": _report,
}


def _latest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    from effvit_deploy.bench.analysis import latest_rows

    return latest_rows(load_results(path))[0]


def _grids(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[int, dict]]]:
    """{(backend, precision, batch): {attention: {px: row}}} of the inference model rows."""
    grids: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        if r.get("mode") == "model" and r.get("resolution"):
            grids[(r["backend"], r["precision"], r["batch"])][r["attention"]][r["resolution"]] = r
    return grids


def _ok(row: Optional[dict]) -> bool:
    return bool(row) and row["status"] == "ok"


def _order(names) -> list[str]:
    return [a for a in (*ATTENTIONS, BOUND) if a in names]


def _inference_tables(grids: dict) -> tuple[list[str], dict[str, Any]]:
    """Markdown: per (backend, precision, batch), median ms with latency / bound, and peak
    memory with memory / exact's; and the same ratios as data for summary.json."""
    lines, data = [], {}
    for key in sorted(grids):
        by, sizes = grids[key], sorted({s for g in grids[key].values() for s in g})
        label = f"{key[0]}, {key[1]}, batch {key[2]}"
        data[label] = {}
        head = ["| attention | " + " | ".join(f"{s} px ({by[next(iter(by))].get(s, {}).get('tokens', '?')} tok)"
                                            for s in sizes) + " |", "|---|" + "---|" * len(sizes)]
        lat, mem = [f"### {label}: median ms (latency / attention-free bound)", ""] + head, \
                   [f"### {label}: peak memory MiB (memory / exact's)", ""] + head
        for att in _order(by):
            cells_l, cells_m = [], []
            for s in sizes:
                r, b, e = by[att].get(s), by.get(BOUND, {}).get(s), by.get("exact", {}).get(s)
                if not _ok(r):
                    cells_l.append(r["status"] if r else "-")
                    cells_m.append(r["status"] if r else "-")
                    continue
                ms = r["latency_median_ms"]
                over = ms / b["latency_median_ms"] if _ok(b) else None
                m = r.get("peak_mem_bytes")
                vs_exact = m / e["peak_mem_bytes"] if m is not None and _ok(e) and e.get("peak_mem_bytes") else None
                data[label].setdefault(att, {})[s] = {"ms": ms, "over_bound": over, "peak_mem_bytes": m,
                                                      "mem_over_exact": vs_exact}
                cells_l.append(f"{ms:.1f}" + (f" ({over:.2f})" if over is not None else ""))
                cells_m.append("-" if m is None else f"{m / 2**20:.0f}" + (f" ({vs_exact:.2f})" if vs_exact else ""))
            lat.append(f"| {att} | " + " | ".join(cells_l) + " |")
            mem.append(f"| {att} | " + " | ".join(cells_m) + " |")
        lines += lat + [""] + mem + [""]
    return lines, data


def _targets(plan: dict[str, Any], grids: dict, train_rows: list[dict]) -> list[dict[str, Any]]:
    """The issue's GPU targets, each measured cell with its limit and whether it is met."""
    checks = []

    def add(target: str, where: str, att: str, value: float, limit: float) -> None:
        checks.append({"target": target, "where": where, "attention": att, "value": round(value, 3),
                       "limit": limit, "met": value <= limit})

    big = grids.get(("torch", "bf16", plan["batch"]), {})
    for s in plan["target_res"]:
        b = big.get(BOUND, {}).get(s)
        for att in ATTENTIONS[1:]:
            r = big.get(att, {}).get(s)
            if _ok(r) and _ok(b):
                add("latency / bound", f"torch bf16 batch {plan['batch']} {s} px", att,
                    r["latency_median_ms"] / b["latency_median_ms"], LATENCY_OVER_BOUND_MAX)
    for s in sorted({s for g in big.values() for s in g}):
        e = big.get("exact", {}).get(s)
        for att in ATTENTIONS[1:]:
            r = big.get(att, {}).get(s)
            if _ok(r) and _ok(e) and r.get("peak_mem_bytes") is not None and e.get("peak_mem_bytes"):
                add("peak memory / exact's", f"torch bf16 batch {plan['batch']} {s} px", att,
                    r["peak_mem_bytes"] / e["peak_mem_bytes"], 1.0)
    cg = grids.get(("torch-compile-cudagraphs", "bf16", 1), {})
    for s in sorted({s for g in cg.values() for s in g}):
        b = cg.get(BOUND, {}).get(s)
        for att in ATTENTIONS[1:]:
            r = cg.get(att, {}).get(s)
            if _ok(r) and _ok(b):
                add("batch-1 CUDA graphs latency / bound", f"{s} px", att,
                    r["latency_median_ms"] / b["latency_median_ms"], CUDAGRAPHS_OVER_BOUND_MAX)
    train = {r["attention"]: r for r in train_rows if r["resolution"] == plan["train_target_res"] and _ok(r)}
    if "exact" in train:
        for att in ATTENTIONS[1:]:
            if att in train:
                add("training step / exact's", f"bf16 batch {plan['batch']} {plan['train_target_res']} px", att,
                    train[att]["latency_median_ms"] / train["exact"]["latency_median_ms"], 1.0)
    for key, by in sorted(grids.items()):  # item 5: the bound is no slower than exact anywhere
        for s, b in sorted(by.get(BOUND, {}).items()):
            e = by.get("exact", {}).get(s)
            if _ok(b) and _ok(e):
                add("bound / exact (the bound is a bound)", f"{key[0]} {key[1]} batch {key[2]} {s} px", BOUND,
                    b["latency_median_ms"] / e["latency_median_ms"], 1.0)
    return checks


def write_summary(out: Path, plan: dict[str, Any], smoke: bool, command: str) -> Path:
    """RESULTS/summary.md and summary.json from the rows there now; returns summary.md."""
    infer, train = _latest(out / "results.jsonl"), _latest(out / f"{TRAIN_STEP}.jsonl")
    rows = infer + train
    env = next((r["env"] for r in rows if r.get("env")), {})
    machine_txt = (out / "machine.txt").read_text().strip() if (out / "machine.txt").is_file() else ""
    commit = os.environ.get("GIT_COMMIT") or env.get("git_commit", "unknown")
    grids = _grids(infer)
    inference_md, ratios = _inference_tables(grids)
    targets = _targets(plan, grids, train)
    title = "CPU smoke run of the GPU check (toy model, not a GPU figure)" if smoke else "GPU check"
    lines = [f"# {title}: {plan['model']}, every attention variant and the attention-free bound", "",
             f"- device: {env.get('gpu') or 'none (CPU: ' + env.get('cpu_model', '?') + ')'}; driver "
             f"{env.get('gpu_driver') or '-'}; CUDA {env.get('cuda') or '-'}",
             f"- torch {env.get('torch', '?')}, timm {env.get('timm', '?')}, Python {env.get('python', '?')}",
             f"- git commit measured: {commit}", f"- command: `{command}`",
             *([f"- nvidia-smi: {line}" for line in machine_txt.splitlines()] if machine_txt else []),
             "- method: untrained models (timing depends on shapes only); inference = effvit-bench's torch backends "
             "(bf16 = weights and input in bf16), input on the device, CUDA events (perf_counter on CPU), median "
             f"after {plan['warmup']} warm-ups; training = forward under bf16 autocast + cross-entropy + backward + "
             "AdamW, median after warm-ups; peak memory = allocator peak above the weights (CPU: resident-set rise).",
             "", "## Targets", ""]
    if targets:
        lines += ["| target | configuration | attention | measured | limit | met |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['target']} | {t['where']} | {t['attention']} | {t['value']:.2f} | {t['limit']} | "
                  f"{'yes' if t['met'] else 'NO'} |" for t in targets]
    else:
        lines.append("No measured cell yet.")
    lines += ["", "## Inference", ""] + (inference_md or ["No inference rows."])
    lines += ["## Training step (forward, backward, AdamW)", ""] + (train_tables(train) or ["No training rows.", ""])
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        lines += ["## Not measured", ""] + [
            f"- {'training' if r.get('mode') == 'train' else 'inference'} {r['attention']} {r['backend']} "
            f"{r['precision']} " + (f"batch {r['batch']} {r['resolution']} px" if r.get("batch") else "(every size)")
            + f": {r['status']}: {r.get('reason', '')}" for r in failed]
    write_json(out / "summary.json", {"title": title, "model": plan["model"], "environment": env, "commit": commit,
                                      "command": command, "nvidia_smi": machine_txt, "targets": targets,
                                      "inference": ratios})
    path = out / "summary.md"
    write_text(path, "\n".join(lines) + "\n")
    return path


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=list(KINDS))
    p.add_argument("--out", type=Path, required=True, help="results folder (shared by every kind)")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: the same code path in seconds")
    p.add_argument("--command", default=" ".join(sys.argv), help="the command recorded in the summary")
    p.add_argument("--repeats", type=int, help="timed calls per configuration (default: 10 on GPU, 3 in the smoke)")
    p.add_argument("--max-time", type=float, help="timed-work budget per configuration in s (default: 3 on GPU)")
    args = p.parse_args(argv)
    plan = dict(SMOKE if args.cpu_smoke else FULL)
    if args.repeats:
        plan["repeats"] = plan["train_repeats"] = args.repeats
    if args.max_time:
        plan["max_time_s"] = args.max_time
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: error: no CUDA device visible; run on a GPU machine, or add --cpu-smoke", file=sys.stderr)
            return 3
    args.out.mkdir(parents=True, exist_ok=True)
    KINDS[args.kind](plan, args.out)
    print(f"{args.kind}: done; summary: {write_summary(args.out, plan, args.cpu_smoke, args.command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
