"""The benchmark report: report.md and report.html (PNG plots embedded) from a results file.

What it reads off the rows is in `analysis`, the plots are drawn by `plots`, the two documents
rendered by `document`; this module says what the report contains, section by section.

Plots (matplotlib, Agg): latency and peak memory against tokens per image on log-log axes with
each variant's fitted scaling exponent; speed-up over exact attention with the attention-free
bound's ceiling; accuracy against latency with the Pareto front; the same scaling plots for
`--layer-only` rows. Tables: exponents, each variant's speed-up next to the largest possible
(exact / attention-free bound) and the fraction achieved, the user's own speed-up targets when
given, crossover resolutions, recommendations under latency budgets, every configuration and
every failure with its reason. Nothing is typed in by hand: every figure comes from the rows.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Union

from ..atomic import write_text
from ..evaluation import MIN_IMAGES
from .analysis import (EXACT, FIT_POINTS, crossover, display_order, fit_exponent, latest_rows, measured_here,
                       pareto_front, pick, series, tokens_to_resolution, tradeoff_points, with_accuracy)
from .bound import BOUND
from .document import Block, Section, render_html, render_markdown
from .plots import scaling_plot, speedup_plot, tradeoff_plot
from .results import load_results

BUDGETS_MS = (10, 30, 100, 300, 1000, 3000, 10000)
MEMORY_NOTE = (
    "Peak memory on CPU is the rise of the process's resident-set high-water mark during warm-up and "
    "timed calls above its resident set just before them (after imports, model/session load and input "
    "preparation), each configuration in a fresh process: activations, workspaces and allocator/arena "
    "growth; not weights, input, interpreter or libraries. On GPU: PyTorch's allocator peak for the "
    "PyTorch backends, NVML device memory in use (weights and context included) for the others."
)
TIMING_NOTE = (
    "Latency is one forward pass of the whole batch (input already in the backend's format), timed after "
    "untimed warm-up calls, with the device synchronised; median, p90 and p99 over the timed repeats. "
    "Throughput = batch / median latency."
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10 ** digits else f"{value:.0f}"
    return str(value)


def _decidable(row: dict) -> bool:
    """True when the row's top-1 may rank it: measured here on at least MIN_IMAGES images."""
    return measured_here(row) and row["top1_images"] >= MIN_IMAGES


def _accuracy(row: dict) -> str:
    """"91.2% [89.3, 92.8] on 1,000 images" (the count always printed)."""
    lo, hi = row.get("top1_ci95") or (None, None)
    interval = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if lo is not None else ""
    tail = "" if row["top1_images"] >= MIN_IMAGES else f", under {MIN_IMAGES}: not recommended"
    return f"{100 * row['top1']:.1f}%{interval} on {row['top1_images']:,} images{tail}"


def _pareto_table(points: dict) -> Block:
    body = []
    for key in sorted(points, key=lambda k: k[2]):
        pts = points[key]
        for i in pareto_front([p["latency_median_ms"] for p in pts], [p["top1"] for p in pts]):
            p = pts[i]
            body.append([p["batch"], p["run"], p["attention"], p["backend"], p["precision"], p["resolution"],
                         _fmt(p["latency_median_ms"]), _accuracy(p)])
    return ("table", ["batch", "run", "attention", "backend", "precision", "px", "median ms", "top-1 [95% CI]"], body)


def _exponent_table(series: dict, mode: str) -> Block:
    body = []
    for key in sorted(series):
        for att in display_order(series[key]):
            pts = series[key][att]
            used = pts[-FIT_POINTS:]
            body.append([mode, key[0], key[1], key[2], att, _fmt(fit_exponent(pts, "latency_median_ms")),
                         _fmt(fit_exponent(pts, "peak_mem_bytes")), f"{used[0]['tokens']}-{used[-1]['tokens']}" if used else "-"])
    return ("table", ["mode", "backend", "precision", "batch", "attention", "latency exponent", "memory exponent", "fit tokens"], body)


def _speedup_table(series: dict) -> Block:
    tokens = sorted({p["tokens"] for by in series.values() for pts in by.values() for p in pts})
    body = []
    for key in sorted(series):
        exact = {p["tokens"]: p["latency_median_ms"] for p in series[key].get(EXACT, [])}
        for att in display_order(series[key]):
            if att == EXACT:
                continue
            mine = {p["tokens"]: p["latency_median_ms"] for p in series[key][att]}
            body.append([key[0], key[1], key[2], att] + [
                f"{exact[t] / mine[t]:.2f}x" if t in exact and t in mine else "-" for t in tokens])
    return ("table", ["backend", "precision", "batch", "attention"] + [f"{t} tok" for t in tokens], body)


def _bound_table(series: dict) -> list[Block]:
    """Each variant's speed-up over exact beside the largest speed-up possible (exact / the
    attention-free bound) and the fraction of it achieved, per backend and resolution."""
    body = []
    for key in sorted(series):
        by = series[key]
        if EXACT not in by or BOUND not in by:
            continue
        exact = {p["resolution"]: p for p in by[EXACT]}
        bound = {p["resolution"]: p for p in by[BOUND]}
        for res in sorted(set(exact) & set(bound)):
            e, b = exact[res]["latency_median_ms"], bound[res]["latency_median_ms"]
            for att in display_order(by):
                if att in (EXACT, BOUND):
                    continue
                mine = next((p for p in by[att] if p["resolution"] == res), None)
                if mine is None:
                    continue
                v = mine["latency_median_ms"]
                check = "bound not the fastest: within timing noise, re-measure" if b > min(e, v) else ""
                body.append([key[0], key[1], key[2], res, exact[res]["tokens"], att, f"{e / v:.2f}x", f"{e / b:.2f}x",
                             f"{100 * b / v:.0f}%", f"{v / b:.2f}x", check])
    if not body:
        return [("p", "No attention-free bound next to exact attention in these results (run with --bound).")]
    baselines = sorted({f"{p['backend']} {p['precision']}: {p['implementation']}" for by in series.values()
                        for p in by.get(EXACT, []) if p.get("implementation")})
    note = ("The attention-free bound is the same model with token mixing replaced by a no-op (each token keeps its "
            "own value vector; the q/k/v and output projections, MLPs and norms still run): no attention mechanism "
            "can make the model faster than it. Largest possible = exact / bound; achieved = the variant's speed-up "
            "as a fraction of it (= bound / variant); the last column is the variant's latency over the bound's.")
    if baselines:
        note += " Exact baseline per backend (the fastest exact implementation each offers here): " + "; ".join(baselines) + "."
    return [("p", note), ("table", ["backend", "precision", "batch", "px", "tokens", "attention", "speed-up over exact",
                                    "largest possible", "achieved", "latency / bound", "check"], body)]


def _targets(rows: list[dict], series: dict, targets: dict[int, float]) -> list[Block]:
    """The user's speed-up targets (resolution px -> speed-up over exact), each with the
    measured figure, the largest possible there and the verdict."""
    body = []
    for key in sorted(series):
        if EXACT not in series[key]:
            continue
        exact = {p["resolution"]: p for p in series[key][EXACT]}
        bound = {p["resolution"]: p for p in series[key].get(BOUND, [])}
        present = {r["attention"] for r in rows if r["mode"] == "model"} - {EXACT, BOUND}
        for att in display_order(present):
            mine = {p["resolution"]: p for p in series[key].get(att, [])}
            for res, target in sorted(targets.items()):
                label = f"{res} px speed-up >= {target:g}x"
                ceiling = (f"{exact[res]['latency_median_ms'] / bound[res]['latency_median_ms']:.2f}x"
                           if res in exact and res in bound else "-")
                if res in mine and res in exact:
                    s = exact[res]["latency_median_ms"] / mine[res]["latency_median_ms"]
                    verdict = "met" if s >= target else f"missed ({s:.2f}x of {target:g}x)"
                    body.append([key[0], key[1], key[2], att, label, f"{s:.2f}x", ceiling, verdict])
                else:
                    body.append([key[0], key[1], key[2], att, label, "-", ceiling,
                                 f"not measured: {_why_missing(rows, key, att, res)}"])
    if not body:
        return [("p", "No exact-attention baseline in these results: the targets cannot be read off.")]
    return [("table", ["backend", "precision", "batch", "attention", "target", "measured", "largest possible", "verdict"], body)]


def _why_missing(rows: list[dict], key: tuple, att: str, resolution: int) -> str:
    reasons = [f"{r['attention']}: {r['status']} ({r['reason']})" for r in rows
               if (r["backend"], r["precision"], r["batch"]) == key and r["resolution"] == resolution
               and r["attention"] in (att, EXACT) and r["status"] != "ok" and r["mode"] == "model"]
    return "; ".join(reasons) or "size not in the sweep"


def _crossover_table(series: dict, rows: list[dict]) -> Block:
    patch = {r["run"]: r.get("patch", 16) for r in rows}
    body = []
    for key in sorted(series):
        if EXACT not in series[key]:
            continue
        exact = {p["tokens"]: p["latency_median_ms"] for p in series[key][EXACT]}
        for att in display_order(series[key]):
            if att == EXACT:
                continue
            pts = [p for p in series[key][att] if p["tokens"] in exact]
            kind, tokens = crossover([p["tokens"] for p in pts], [exact[p["tokens"]] for p in pts],
                                     [p["latency_median_ms"] for p in pts])
            p16 = patch.get(pts[0]["run"], 16) if pts else 16
            text = {"never": "not within the measured sizes",
                    "below": f"faster from the smallest size measured ({tokens_to_resolution(tokens or 0, p16):.0f} px)",
                    "at": f"~{tokens_to_resolution(tokens or 0, p16):.0f} px ({tokens or 0:.0f} tokens)"}[kind]
            body.append([key[0], key[1], key[2], att, text])
    return ("table", ["backend", "precision", "batch", "attention", "overtakes exact at"], body)


def _recommendations(rows: list[dict], budgets_ms: tuple[float, ...]) -> list[Block]:
    ok = [r for r in rows if r["mode"] == "model" and r["status"] == "ok" and r["attention"] != BOUND and r["batch"] == min(
        (x["batch"] for x in rows if x["mode"] == "model" and x["status"] == "ok"), default=1)]
    if not ok:
        return [("p", "No model measurements: no recommendations.")]
    body = []
    for res in sorted({r["resolution"] for r in ok}):
        cands = [r for r in ok if r["resolution"] == res]
        scored = [r for r in cands if _decidable(r)]
        few = sorted({r["top1_images"] for r in cands if measured_here(r) and not _decidable(r)})
        previous, start, last = None, None, None
        for budget in budgets_ms:
            c = pick(scored, budget)
            if c is None:
                text = ("no configuration fits" if pick(cands, budget) is None else
                        f"none recommended: top-1 not measured at {res} px on >= {MIN_IMAGES} images"
                        + (f" (only on {', '.join(map(str, few))})" if few else ""))
            else:
                text = (f"{c['attention']} ({c['backend']} {c['precision']}, {c['latency_median_ms']:.3g} ms, "
                        f"top-1 {_accuracy(c)})")
            if text != previous:
                if previous is not None:
                    body.append([f"{res} px", _budget_range(start, last), previous])
                previous, start = text, budget
            last = budget
        body.append([f"{res} px", _budget_range(start, last), previous])
    note = (f"Each row: for latency budgets in the range (batch {ok[0]['batch']}), the most accurate configuration whose "
            f"median latency fits, fastest on ties, among those whose top-1 was measured at that resolution on at least "
            f"{MIN_IMAGES} images. Budgets with the same answer are merged. A configuration measured on fewer images is "
            "not recommended, and the row says so.")
    return [("p", note), ("table", ["resolution", "latency budget", "recommendation"], body)]


def _budget_range(start: float, end: float) -> str:
    return f"<= {start:g} ms" if start == end else f"<= {start:g} ms to <= {end:g} ms"


def _results_table(rows: list[dict]) -> Block:
    body = []
    for r in sorted(rows, key=lambda r: (r["mode"], r["backend"], r.get("precision") or "", r.get("batch") or 0,
                                         r.get("resolution") or 0, r["attention"])):
        if r["status"] == "skipped" and r.get("resolution") is None:
            continue
        mem = r.get("peak_mem_bytes")
        body.append([r["mode"], r["attention"], r["backend"], r["precision"], _fmt(r["batch"]), _fmt(r["resolution"]),
                     _fmt(r["tokens"]), _fmt(r.get("gflops")), _fmt(r.get("latency_median_ms")),
                     _fmt(r.get("latency_p90_ms")), _fmt(r.get("latency_p99_ms")), _fmt(r.get("throughput_ips")),
                     _fmt(mem / 2**20 if mem is not None else None), _fmt(r.get("repeats_done")),
                     _fmt(100 * r["top1"] if r.get("top1") is not None else None), _fmt(r.get("top1_images")),
                     _fmt(r.get("top1_resolution")),
                     r.get("thread_policy") or "-", r["status"]])
    return ("table", ["mode", "attention", "backend", "prec", "batch", "px", "tokens", "GFLOPs", "median ms", "p90 ms",
                      "p99 ms", "img/s", "peak MiB", "repeats", "top-1 %", "top-1 images", "top-1 at px", "threads", "status"], body)


def _failures(rows: list[dict]) -> list[Block]:
    bad = {}
    for r in rows:
        if r["status"] != "ok":
            where = f"{r['mode']} {r['attention']} {r['backend']} {r['precision']}" + (
                f" b{r['batch']} {r['resolution']}px" if r.get("resolution") else "")
            bad[where] = [where, r["status"], r["reason"]]
    if not bad:
        return [("p", "Every configuration ran.")]
    return [("table", ["configuration", "status", "reason"], list(bad.values()))]


def _environment(rows: list[dict]) -> Block:
    envs = sorted({tuple(sorted(r["env"].items())) for r in rows if r.get("env")}, key=str)  # one column per machine, stable
    keys = ["cpu_model", "cpu_cores", "cpu_affinity", "memory_gib", "gpu", "gpu_driver", "os", "python", "torch",
            "timm", "onnxruntime", "tensorrt", "git_commit"]
    body = [[k] + ([_fmt(dict(e).get(k)) for e in envs] or ["-"]) for k in keys]
    sweeps = sorted({(r.get("sweep_started"), r.get("warmup"), r.get("repeats_max"), r.get("max_time_s")) for r in rows})
    body.append(["sweeps (start, warm-up, max repeats, timed budget s)", "; ".join(map(str, sweeps))]
                + [""] * (max(1, len(envs)) - 1))
    return ("table", ["environment"] + [f"machine {i + 1}" for i in range(max(1, len(envs)))], body)


def _thread_note(rows: list[dict]) -> Block:
    """Which thread policy the measurements ran under (each row records its own)."""
    seen = defaultdict(set)
    for r in rows:
        if r["status"] == "ok":
            policy = r.get("thread_policy") or ("default" if r.get("spin_wait") else "passive")
            seen[policy].add(f"{r.get('threads', '?')} threads, OpenMP wait policy {r.get('omp_wait_policy') or 'runtime default'}")
    if not seen:
        return ("p", "Thread policy: no successful measurement.")
    parts = [f"{policy} ({'; '.join(sorted(v))})" for policy, v in sorted(seen.items())]
    return ("p", "Thread policy: " + ", ".join(parts) + ". \"default\" leaves each runtime's own settings (idle "
            "threads spin); \"passive\" makes idle threads sleep (OMP_WAIT_POLICY=PASSIVE, ONNX Runtime without "
            "spinning), the robust choice on a host shared with other jobs.")


def write_report(
    results_path: Union[str, Path],
    out_dir: Optional[Union[str, Path]] = None,
    *,
    speedup_targets: Optional[dict[int, float]] = None,
    budgets_ms: tuple[float, ...] = BUDGETS_MS,
    accuracy: Optional[dict[tuple[str, int], dict[str, Any]]] = None,
) -> Path:
    """Write report.md, report.html and the PNG plots for a results file; returns report.md.

    `speedup_targets` ({resolution px: speed-up over exact}) adds a table checking your own
    goals; `budgets_ms` are the latency budgets of the recommendation table. `accuracy`
    ({(run name, px): {"top1", "images", "ci95"}}, PyTorch fp32 top-1 measured elsewhere, e.g.
    the study's evaluation stage) fills the top-1 of the PyTorch fp32 rows of those runs and
    resolutions that have none of their own.
    """
    targets = dict(speedup_targets or {})
    results_path = Path(results_path)
    rows, superseded = latest_rows(load_results(results_path))
    rows = [with_accuracy(r, accuracy or {}) for r in rows]
    out_dir = Path(out_dir) if out_dir else results_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    sections: list[Section] = []
    method: list[Block] = [_environment(rows), _thread_note(rows), ("p", TIMING_NOTE), ("p", MEMORY_NOTE)]
    if superseded:
        method.append(("p", f"{superseded} earlier rows of re-run configurations are superseded by the latest "
                            "measurement (they stay in the results file)."))
    sections.append(("Environment and method", method))

    model = series(rows, "model")
    if model:
        scaling_plot(model, "latency_median_ms", "median latency (ms)", "End-to-end latency vs tokens per image",
                     out_dir / "latency_vs_tokens.png")
        scaling_plot(model, "peak_mem_bytes", "peak memory (MiB)", "End-to-end peak memory vs tokens per image",
                     out_dir / "memory_vs_tokens.png", scale=1 / 2**20)
        blocks: list[Block] = [("img", "latency_vs_tokens.png", "latency vs tokens, log-log, fitted slopes"),
                               ("img", "memory_vs_tokens.png", "peak memory vs tokens, log-log, fitted slopes")]
        drawn = speedup_plot(model, out_dir / "speedup_vs_tokens.png", targets)
        if drawn is not None:
            caption = "speed-up over exact attention (latency of exact / latency of the variant, grey line: 1x)"
            blocks.append(("img", "speedup_vs_tokens.png", caption + ("; dashed: the largest possible (attention-free bound)"
                                                                      if drawn else "; no attention-free bound measured")))
        blocks += [("p", f"Exponents: least-squares slope in log-log over the {FIT_POINTS} largest token counts."),
                   _exponent_table(model, "model")]
        sections.append(("Scaling with tokens (whole model)", blocks))
        sections.append(("Speed-up over exact attention", [_speedup_table(model)]))
        sections.append(("Speed-up against the largest possible (attention-free bound)", _bound_table(model)))
        if targets:
            sections.append(("Your speed-up targets", _targets(rows, model, targets)))
        sections.append(("Crossover: where each variant overtakes exact attention", [_crossover_table(model, rows)]))
    tradeoff = tradeoff_points(rows)
    if tradeoff:
        tradeoff_plot(tradeoff, out_dir / "accuracy_vs_latency.png")
        unscored = sorted({f"{r['attention']} {r['backend']} {r['precision']} {r['resolution']} px" for r in rows
                           if r["mode"] == "model" and r["status"] == "ok" and r["attention"] != BOUND and not measured_here(r)})
        blocks = [("img", "accuracy_vs_latency.png", "top-1 (95% interval) against median latency, one colour per "
                   "attention, one marker per resolution; ringed and joined by a dotted line: the Pareto front"),
                  ("p", "Each point is one configuration (backend, precision, resolution) with top-1 measured for that "
                        "configuration at that resolution (on its backend, or for PyTorch fp32 rows by the study's "
                        "evaluation stage on the same weights); the table lists the Pareto front with each top-1's "
                        "image count."), _pareto_table(tradeoff)]
        if unscored:
            blocks.append(("p", "Not on the plot (top-1 not measured at their own resolution): " + "; ".join(unscored)))
        sections.append(("Accuracy vs latency", blocks))
    elif any(r["mode"] == "model" for r in rows):
        notes = sorted({r.get("top1_source") or "" for r in rows if r["mode"] == "model" and r["attention"] != BOUND} - {""})
        sections.append(("Accuracy vs latency", [("p", "No accuracy measured at a configuration's own resolution: "
                                                       + ("; ".join(notes) or "none recorded"))]))
    if model:
        sections.append(("Recommendations", _recommendations(rows, tuple(budgets_ms))))
    layer = series(rows, "layer")
    if layer:
        scaling_plot(layer, "latency_median_ms", "median latency (ms)", "One attention layer: latency vs tokens",
                     out_dir / "layer_latency_vs_tokens.png")
        scaling_plot(layer, "peak_mem_bytes", "peak memory (MiB)", "One attention layer: peak memory vs tokens",
                     out_dir / "layer_memory_vs_tokens.png", scale=1 / 2**20)
        sections.append(("Scaling with tokens (one attention layer)", [
            ("img", "layer_latency_vs_tokens.png", "layer latency vs tokens"),
            ("img", "layer_memory_vs_tokens.png", "layer peak memory vs tokens"),
            _exponent_table(layer, "layer"), _speedup_table(layer)]))
    sections.append(("All configurations", [_results_table(rows)]))
    sections.append(("Skipped and failed configurations", _failures(rows)))

    title = "effvit-bench report"
    md_path = out_dir / "report.md"
    write_text(md_path, render_markdown(sections, title))
    write_text(out_dir / "report.html", render_html(sections, title, out_dir))
    return md_path
