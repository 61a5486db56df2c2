"""The study's tables: one row per fine-tuned mechanism (from its run and the evaluation stage),
McNemar's paired test against exact attention, the study table (report/study.md, .json) with the
provenance a results file needs, and the README's compact table.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from .run import Study


def paired_tests(evals: dict[str, dict[str, dict]], exact: str) -> dict[str, dict[str, dict]]:
    """{run: {resolution: McNemar vs the exact run on the same images}} (evaluation.mcnemar)."""
    from ..evaluation import mcnemar

    out: dict[str, dict[str, dict]] = {}
    for name, by_res in evals.items():
        if name == exact:
            continue
        out[name] = {res: mcnemar([c == "1" for c in acc["correct"]], [c == "1" for c in evals[exact][res]["correct"]])
                     for res, acc in by_res.items() if res in evals.get(exact, {})}
    return out


def study_rows(runs: list[Path], evals: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """One row per fine-tuned mechanism, from its summary.json and the evaluation stage."""
    from ..runs import load_summary
    from ..recipes import read_yaml

    exact = next((r.name for r in runs if r.name.endswith("-exact")), None)
    tests = paired_tests(evals, exact) if exact else {}
    rows = []
    for run in runs:
        summary = load_summary(run) or {}
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        config = read_yaml((run / "config.yaml").read_text())
        amp = config.get("amp") or {}
        rows.append({
            "attention": summary["attention"], "run": run.name, "img_size": summary["img_size"],
            "zero_shot_top1": summary.get("zero_shot_top1"), "zero_shot_top5": summary.get("zero_shot_top5"),
            "val_images": last["val_images"], "top1": summary["top1"], "top5": summary["top5"],
            "epochs": summary["epochs"], "amp": amp.get("dtype") if amp.get("enabled") else "off",
            "device": summary.get("device"), "train_s_per_epoch": summary["train_s_per_epoch"],
            "train_images_per_s": summary["images_per_s"], "eval_images_per_s": last["val_images"] / summary["eval_s"],
            "train_images": _train_images(config, summary), "peak_mem_bytes": summary["peak_mem_bytes"],
            "peak_mem_kind": summary["peak_mem_kind"], "gflops": summary["gflops"], "params": summary["params"],
            "new_tensors": len((summary.get("init_from") or {}).get("new", [])),
            "accuracy_at": {res: {k: v for k, v in acc.items() if k != "correct"}
                            for res, acc in evals.get(run.name, {}).items()},
            "vs_exact": tests.get(run.name, {}),
        })
    return rows


def _train_images(config: dict[str, Any], summary: dict[str, Any]) -> int:
    """Images per training epoch: a generated set's train_size, else rate x time."""
    data = config.get("data") or {}
    if data.get("name") in ("cluttered", "synthetic") and data.get("train_size"):
        return int(data["train_size"])
    return round(summary["images_per_s"] * summary["train_s_per_epoch"])


def _cell(acc: Optional[dict]) -> str:
    if acc is None:
        return "not measured"
    return f"{acc['top1']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]"


def _paired_cell(row: dict, res: str) -> str:
    test, acc = row["vs_exact"].get(res), row["accuracy_at"].get(res)
    if test is None or acc is None:
        return "-"
    delta = (test["a_only"] - test["b_only"]) / test["images"]
    return f"{delta:+.3f} (p {test['p_value']:.2g}; {test['a_only']} vs {test['b_only']})"


def render_study(rows: list[dict], source: dict[str, Any], walls: dict[str, float], command: str,
                 env: dict[str, Any], export_failures: Optional[list[str]] = None,
                 load: Optional[tuple[float, float, float]] = None, cpu_s: Optional[dict[str, float]] = None) -> str:
    """The study tables as Markdown, with the provenance a results file needs."""
    from ..bench.markdown import md_table

    resolutions = sorted({int(r) for row in rows for r in row["accuracy_at"]})
    patch = source.get("patch_size", 8)
    counts = sorted({acc["images"] for row in rows for acc in row["accuracy_at"].values()})
    n = ", ".join(f"{c:,}" for c in counts) or "0"
    study_res = rows[0]["img_size"]
    load = load or os.getloadavg()

    def tok(res: int) -> str:
        return f"{res} px ({(res // patch) ** 2} tok)"

    header = (["attention", f"zero-shot top-1 @ {study_res} px ({rows[0]['val_images']:,} images)"]
              + [f"top-1 @ {tok(r)} [95% CI], {n} images" for r in resolutions]
              + ["train s/epoch", "train img/s", "peak mem (MiB)", f"GFLOPs/img @ {study_res} px", "params (k)", "new tensors"])
    body = [[r["attention"], f"{r['zero_shot_top1']:.3f}" if r.get("zero_shot_top1") is not None else "-"]
            + [_cell(r["accuracy_at"].get(str(res))) for res in resolutions]
            + [f"{r['train_s_per_epoch']:.1f}", f"{r['train_images_per_s']:.1f}", f"{r['peak_mem_bytes'] / 2**20:.0f}",
               f"{r['gflops']:.3f}", f"{r['params'] / 1e3:.1f}", r["new_tensors"]] for r in rows]
    paired = [[r["attention"]] + [_paired_cell(r, str(res)) for res in resolutions] for r in rows if r["vs_exact"]]
    lines = [
        "# Attention-swap study: exact ViT -> each mechanism, fine-tuned (cluttered digits)", "",
        f"Command: `{command}`  ",
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_cores')} cores, {env.get('memory_gib')} GiB, "
        f"{env.get('gpu') or 'no GPU'}; load average (1/5/15 min) when written: " + "/".join(f"{x:.1f}" for x in load)
        + " (this run's own work counts; well above the core count means other jobs shared the machine and inflated the times)  ",
        f"git commit: {env.get('git_commit')}; torch {env.get('torch')}, timm {env.get('timm')}, "
        f"onnxruntime {env.get('onnxruntime')}  ",
        "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"; total {sum(walls.values()):.0f}" + ("  " if cpu_s else ""),
        *(["CPU time per stage (s, all cores): " + ", ".join(f"{k} {v:.0f}" for k, v in cpu_s.items())
           + f"; total {sum(cpu_s.values()):.0f}"] if cpu_s else []), "",
        f"Source model: `{source['run']}`, exact attention trained from scratch"
        + (f" at {' px, then '.join(str(r) for r in source.get('stages', [])[:-1])} px, then" if len(source.get("stages", [])) > 1 else "")
        + f" at {source['img_size']} px ({(source['img_size'] // patch) ** 2} patch tokens), top-1 {source['top1']:.3f} there on "
        f"{source.get('val_images', 0):,} validation images. Each row starts from it (its tensors copied, mechanism "
        f"tensors new); zero-shot = the swapped model before any fine-tuning; then every mechanism gets the same "
        f"fine-tuning budget at {study_res} px ({rows[0]['epochs']} epoch(s) of {rows[0]['train_images']:,} images). "
        f"Top-1 at larger resolutions: the same weights, no retraining (position embedding resampled), on the same "
        f"validation images rendered on a larger canvas (same digit, same pixel scale, more clutter), PyTorch. "
        f"Intervals: 95% Wilson.", "",
        *md_table(header, body), "",
        f"Peak memory is {rows[0]['peak_mem_kind']}.", "",
    ]
    if paired:
        lines += [
            "## Paired test against exact attention (McNemar, exact binomial, same images)", "",
            "Each cell: top-1 difference to exact (positive: better), two-sided p-value, and the images only this "
            "mechanism got right vs only exact got right. p >= 0.05: no difference detectable on these images. "
            f"The table holds {sum(len(r['vs_exact']) for r in rows)} tests: at a family-wise 5% level (Bonferroni) a "
            f"cell needs p < {0.05 / max(1, sum(len(r['vs_exact']) for r in rows)):.2g}.", "",
            *md_table(["attention"] + [f"vs exact @ {tok(r)}" for r in resolutions], paired), "",
        ]
    if export_failures:
        lines += ["Exports that failed verification (left out of the ONNX Runtime benchmark):", ""]
        lines += [f"- {failure}" for failure in export_failures] + [""]
    return "\n".join(lines)


def readme_table(study: dict[str, Any]) -> str:
    """The README's compact study table from a study.json: top-1 with its interval at each
    resolution, the paired test against exact at the study resolution, cost columns."""
    from ..bench.markdown import md_table

    rows, patch = study["rows"], study["source"].get("patch_size", 8)
    resolutions = sorted({int(r) for row in rows for r in row["accuracy_at"]})
    study_res = str(rows[0]["img_size"])
    n = ", ".join(f"{c:,}" for c in sorted({a["images"] for row in rows for a in row["accuracy_at"].values()}))
    header = (["attention", "zero-shot top-1"] + [f"top-1 @ {r} px ({(r // patch) ** 2} tok) [95% CI]" for r in resolutions]
              + [f"vs exact @ {study_res} px: diff (McNemar p)", "train s/epoch", "peak mem (MiB)"])
    body = []
    for r in rows:
        test = r["vs_exact"].get(study_res)
        paired = (f"{(test['a_only'] - test['b_only']) / test['images']:+.3f} (p {test['p_value']:.2g})" if test
                  else "control")
        body.append([r["attention"], f"{r['zero_shot_top1']:.3f}"] + [_cell(r["accuracy_at"].get(str(res))) for res in resolutions]
                    + [paired, f"{r['train_s_per_epoch']:.1f}", f"{r['peak_mem_bytes'] / 2**20:.0f}"])
    return "\n".join(md_table(header, body) + ["", f"Every top-1 on the same {n} validation images; zero-shot on "
                                                    f"{rows[0]['val_images']:,}."])


def demo_examples(runs: list[Path], evals: dict[str, dict[str, dict]], limit: Optional[int] = None) -> list[dict[str, Any]]:
    """The demo's in-distribution examples (`demo.examples.validation_examples` of the exact
    run: validation indices) and whether each run's evaluation at the study resolution got each
    one right (from its per-image record, the same images)."""
    import tempfile

    from ..demo.examples import validation_examples
    from ..runs import load_model_card

    exact = next(r for r in runs if r.name.endswith("-exact"))
    card = load_model_card(exact)
    subset_order = validation_subset_indices(card, limit)
    res = str(card.img_size)
    out = []
    for index, _path, caption in validation_examples(card, Path(tempfile.gettempdir()) / "effvit-demo-examples"):
        position = subset_order.index(index) if index in subset_order else None
        out.append({"index": index, "caption": caption,
                    "correct": {r.name: evals[r.name][res]["correct"][position] == "1" for r in runs
                                if res in evals.get(r.name, {}) and position is not None}})
    return out


def validation_subset_indices(card: Any, limit: Optional[int] = None) -> list[int]:
    """The validation indices `evaluation.top1_of` scores for `limit`, in its order."""
    from ..data.subset import validation_subset

    return list(validation_subset(card, limit).indices)



def write_study(s: Study, source: Path, runs: list[Path], evals: dict, command: str) -> Path:
    from ..atomic import write_json, write_text
    from ..environment import environment
    from ..runs import load_model_card, load_summary

    card, summary = load_model_card(source), load_summary(source) or {}
    last = json.loads((source / "metrics.jsonl").read_text().splitlines()[-1])
    stages = [load_model_card(s.out / f"{recipe.stem}-exact").img_size for recipe in s.profile.pretrain_recipes]
    src = {"run": source.name, "img_size": card.img_size, "patch_size": card.patch_size, "top1": summary.get("top1"),
           "val_images": last.get("val_images"), "stages": stages}
    rows, env, load = study_rows(runs, evals), environment(), os.getloadavg()
    demo = demo_examples(runs, evals, s.eval_limit)
    path = s.report_dir / "study.md"
    write_json(path.with_suffix(".json"), {"command": command, "profile": s.profile.name, "environment": env,
                                          "load_average": load, "walls_s": s.walls, "cpu_s": s.cpu_s, "source": src, "rows": rows,
                                          "demo_examples": demo,
                                          "export_failures": s.export_failures})
    write_text(path, render_study(rows, src, s.walls, command, env, s.export_failures, load, s.cpu_s))
    return path
