"""The main job (`make demo`): the attention-swap study, in miniature, on bundled data.

Take a ViT trained with exact attention, swap in each mechanism, fine-tune it with the same
budget (exact included, as the control) and compare accuracy, time, memory and FLOPs as the
resolution grows, on cluttered digits (one handwritten digit to find in a large image), where
fine-tuning runs at 256+ patch tokens:

    1. pretrain   the exact ViT, cheaply at a low resolution (train/cluttered_pretrain.yaml)
    2. fine-tune  every mechanism from it at the study resolution (train/cluttered.yaml with
                  init_from): zero-shot swap accuracy (epoch 0) and fine-tuned accuracy
    3. evaluate   each fine-tuned model at the study resolution and larger ones, no retraining
    4. export     each fine-tuned run to ONNX fp32, fp16 and INT8, verified against PyTorch
    5. bench      latency, memory and top-1 per resolution, PyTorch and ONNX Runtime, up to
                  4,096+ tokens; the report (Pareto front, recommendation per resolution)
    6. error      each approximation's error vs exact attention on the study's exact model

A second run reuses what is built, and rebuilds a stage whose inputs changed: a run whose
recipe or options differ from its config.yaml is retrained, and the evaluation and benchmark
are measured again when the runs or the resolutions differ from those they recorded. `--redo`
rebuilds everything. The study table (report/study.md, .json) records the command, machine,
git commit and the wall time of every stage.

    python -m effvit_deploy.pipeline [--out runs] [--redo] [--resolutions 128,256,512]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

from .attention import ATTENTIONS

T = TypeVar("T")
PRETRAIN_RECIPE = Path("train/cluttered_pretrain.yaml")
RECIPE = Path("train/cluttered.yaml")
STAGES = 6
FINGERPRINT = "inputs.json"


class Study:
    """Options, per-stage wall times and where things go, for one pipeline run."""

    def __init__(self, out: Path, redo: bool, resolutions: list[int], eval_resolutions: list[int],
                 pretrain_recipe: Path, recipe: Path, eval_limit: int, bench_limit: int) -> None:
        self.out, self.redo = out, redo
        self.resolutions, self.eval_resolutions = resolutions, eval_resolutions
        self.pretrain_recipe, self.recipe = pretrain_recipe, recipe
        self.eval_limit, self.bench_limit = eval_limit, bench_limit
        self.report_dir = out / "report"
        self.bound = False  # the attention-free bound doubles the benchmark's models: opt in with --bound
        self.walls: dict[str, float] = {}
        self.export_failures: list[str] = []

    def stage(self, number: int, title: str, work: Callable[[], T]) -> T:
        print(f"\n=== [{number}/{STAGES}] {title}", flush=True)
        start = time.monotonic()
        result = work()
        self.walls[title.split()[0]] = round(time.monotonic() - start, 1)
        print(f"=== [{number}/{STAGES}] done in {self.walls[title.split()[0]]:.0f} s", flush=True)
        return result


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_identity(run: Path) -> dict[str, Any]:
    """What a later stage's result depends on: the run's config and its trained weights' summary."""
    return {"run": str(run), "config": (run / "config.yaml").read_text(), "summary": (run / "summary.json").read_text()}


def _is_current(directory: Path, inputs: dict[str, Any]) -> bool:
    """True when `directory` holds a result built from exactly these inputs."""
    path = directory / FINGERPRINT
    return path.is_file() and json.loads(path.read_text()).get("digest") == _digest(inputs)


def _record_inputs(directory: Path, inputs: dict[str, Any]) -> None:
    from .atomic import write_json

    write_json(directory / FINGERPRINT, {"digest": _digest(inputs), "options": inputs.get("options")})


def train_current(recipe: Path, attention: str, out: Path, overrides: list[str], redo: bool) -> Path:
    """Train one variant unless OUT/STEM-ATTENTION is complete with this very config; a complete
    run whose config.yaml differs (another recipe, other options) is trained again."""
    from .train import is_complete, load_config, train_all
    from .train.config import read_yaml

    run = out / f"{recipe.stem}-{attention}"
    wanted = load_config(recipe, overrides, attention=attention)
    stale = is_complete(run) and read_yaml((run / "config.yaml").read_text()) != wanted
    if stale:
        print(f"  {run}: its config differs from {recipe} with these options: training it again", flush=True)
    return train_all(recipe, [attention], out, overrides, redo=redo or stale)[0]


def _pretrain(s: Study) -> Path:
    return train_current(s.pretrain_recipe, "exact", s.out, [], s.redo)


def _finetune(s: Study, source: Path) -> list[Path]:
    init = [f"init_from={source.resolve()}"]
    return [train_current(s.recipe, attention, s.out, init, s.redo) for attention in ATTENTIONS]


def accuracy_at(run: Path, resolution: int, limit: int) -> dict[str, float]:
    """PyTorch top-1/top-5 of a run's best weights on its first `limit` val images at `resolution`."""
    import torch

    from .data import build_eval_dataset, collate_skip_bad
    from .runs import load_run
    from .train.engine import topk_correct

    model, card = load_run(run)
    dataset, _ = build_eval_dataset(card.data, resolution, card.mean, card.std, card.interpolation, card.crop_pct)
    subset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    top1 = top5 = count = 0
    with torch.inference_mode():
        for images, labels, _ in torch.utils.data.DataLoader(subset, batch_size=32, collate_fn=collate_skip_bad):
            c1, c5 = topk_correct(model(images), labels)
            top1, top5, count = top1 + c1, top5 + c5, count + len(labels)
    return {"top1": top1 / count, "top5": top5 / count, "images": count}


def _evaluate(s: Study, runs: list[Path]) -> dict[str, dict[str, dict]]:
    """{run name: {resolution: accuracy}}, cached in report/eval.json while its inputs hold."""
    from .atomic import write_json

    directory = s.report_dir / "eval"
    inputs = {"options": {"resolutions": s.eval_resolutions, "limit": s.eval_limit},
              "runs": [_run_identity(r) for r in runs]}
    if not s.redo and _is_current(directory, inputs):
        print(f"  reusing {directory / 'eval.json'} (same runs and resolutions)")
        return json.loads((directory / "eval.json").read_text())
    table = {}
    for run in runs:
        table[run.name] = {}
        for res in s.eval_resolutions:
            start = time.monotonic()
            table[run.name][str(res)] = accuracy_at(run, res, s.eval_limit)
            print(f"  {run.name:>20} {res:>4} px top-1 {table[run.name][str(res)]['top1']:.3f} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
    write_json(directory / "eval.json", table)
    _record_inputs(directory, inputs)
    return table


def _export(s: Study, runs: list[Path]) -> None:
    """fp32, then fp16, then INT8, each verified against PyTorch. An artifact that misses its
    parity tolerance is reported (study table and log) and left out with the ones after it; the
    benchmark then records that run's ONNX cells as skipped, and the rest of the study goes on."""
    from .export import export_run
    from .export.verify import ParityError

    steps = ((("fp32",), False), (("fp32", "fp16"), False), (("fp32", "fp16"), True))
    for run in runs:
        manifest = {"artifacts": []}
        for precisions, int8 in steps:
            try:
                manifest = export_run(run, formats=("onnx",), precisions=precisions, int8=int8,
                                      max_res=max(s.resolutions), max_batch=8, force=s.redo, eval_limit=s.bench_limit)
            except ParityError as exc:
                s.export_failures.append(f"{run.name}: {exc}")
                print(f"  {run.name:>18} not exported: {exc}", flush=True)
                break
        for entry in manifest["artifacts"]:
            worst = max(p["max_abs"] for key, p in entry["parity"].items() if key != "tolerance")
            top1 = (entry.get("accuracy") or {}).get("top1")
            print(f"  {run.name:>18} {entry['format']}/{entry['precision']:<5} max |logit error| {worst:.2e}"
                  + (f"  top-1 {top1:.3f}" if top1 is not None else ""), flush=True)


def _bench(s: Study, runs: list[Path]) -> Path:
    from .bench import run_benchmark, write_report

    directory = s.report_dir
    inputs = {"options": {"resolutions": s.resolutions, "limit": s.bench_limit, "bound": s.bound},
              "runs": [_run_identity(r) for r in runs]}
    results = directory / "results.jsonl"
    if s.redo or not results.is_file() or not _is_current(directory, inputs):
        for stale in (results, results.with_suffix(".csv")):
            stale.unlink(missing_ok=True)
        shutil.rmtree(directory / "cache", ignore_errors=True)
        results = run_benchmark(runs, backends=("torch", "onnxruntime"), resolutions=s.resolutions,
                                batch_sizes=(1,), precisions=("fp32",), out_dir=directory,
                                warmup=1, repeats=5, max_time_s=2.0, timeout_s=300.0,
                                accuracy_limit=s.bench_limit, thread_policy="passive", bound=s.bound)
        _record_inputs(directory, inputs)
    else:
        print(f"  reusing {results} (same runs and resolutions; --redo to measure again)")
    return write_report(results, directory)


def _approximation_error(s: Study, exact_run: Path) -> Path:
    from .approximation import error_table
    from .runs import load_run

    model, card = load_run(exact_run)
    label = f"run {exact_run.name} ({card.model}, fine-tuned on {card.data.get('name')} at {card.img_size} px)"
    return error_table(model, card, card.data, s.eval_resolutions, s.report_dir / "approximation_error.md",
                       label, "python -m effvit_deploy.pipeline", images=8)


def study_rows(runs: list[Path], evals: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """One row per fine-tuned mechanism, from its summary.json and the evaluation stage."""
    from .runs import load_summary

    rows = []
    for run in runs:
        summary = load_summary(run) or {}
        train_images = summary["images_per_s"] * summary["train_s_per_epoch"]
        val_images = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["val_images"]
        rows.append({
            "attention": summary["attention"], "run": run.name, "img_size": summary["img_size"],
            "zero_shot_top1": summary.get("zero_shot_top1"), "zero_shot_top5": summary.get("zero_shot_top5"),
            "top1": summary["top1"], "top5": summary["top5"], "epochs": summary["epochs"],
            "train_s_per_epoch": summary["train_s_per_epoch"], "train_images_per_s": summary["images_per_s"],
            "eval_images_per_s": val_images / summary["eval_s"], "train_images": round(train_images),
            "peak_mem_bytes": summary["peak_mem_bytes"], "peak_mem_kind": summary["peak_mem_kind"],
            "gflops": summary["gflops"], "params": summary["params"],
            "new_tensors": len((summary.get("init_from") or {}).get("new", [])),
            "top1_at": {res: acc["top1"] for res, acc in evals.get(run.name, {}).items()},
        })
    return rows


def render_study(rows: list[dict], source: dict[str, Any], walls: dict[str, float], command: str,
                 env: dict[str, Any], eval_limit: int, export_failures: Optional[list[str]] = None) -> str:
    """The study table as markdown, with the provenance a results file needs."""
    resolutions = sorted({int(r) for row in rows for r in row["top1_at"]})
    patch = source.get("patch_size", 8)
    res_cols = " | ".join(f"top-1 @ {r} px ({(r // patch) ** 2} tok)" for r in resolutions)
    lines = [
        "# Attention-swap study: exact ViT -> each mechanism, fine-tuned (cluttered digits)", "",
        f"Command: `{command}`  ",
        f"Machine: {env.get('cpu_model')}, {env.get('cpu_cores')} cores, {env.get('memory_gib')} GiB, "
        f"{env.get('gpu') or 'no GPU'}; load average (1/5/15 min) when written: "
        + "/".join(f"{x:.1f}" for x in os.getloadavg())
        + " (this run's own work counts; well above the core count means other jobs shared the machine and inflated the times)  ",
        f"git commit: {env.get('git_commit')}; torch {env.get('torch')}, timm {env.get('timm')}, "
        f"onnxruntime {env.get('onnxruntime')}  ",
        "Wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items())
        + f"; total {sum(walls.values()):.0f}", "",
        f"Source model: `{source['run']}`, exact attention trained from scratch at {source['img_size']} px "
        f"({(source['img_size'] // patch) ** 2} patch tokens), top-1 {source['top1']:.3f} there. Each row "
        f"starts from it (its tensors copied, position embedding resampled, mechanism tensors new), "
        f"zero-shot = accuracy of the swapped model before any fine-tuning; then every mechanism gets "
        f"the same fine-tuning budget at {rows[0]['img_size']} px. Top-1 at larger resolutions: the same "
        f"weights, no retraining, first {eval_limit} val images, PyTorch.", "",
        f"| attention | top-1 zero-shot -> fine-tuned | top-5 zero-shot -> fine-tuned | {res_cols} | "
        "train s/epoch | train img/s | eval img/s | peak mem (MiB) | GFLOPs/img | params (k) | new tensors |",
        "|" + "---|" * (11 + len(resolutions)),
    ]
    for r in rows:
        accs = " | ".join(f"{r['top1_at'][str(res)]:.3f}" if str(res) in r["top1_at"] else "not measured" for res in resolutions)
        lines.append(
            f"| {r['attention']} | {r['zero_shot_top1']:.3f} -> {r['top1']:.3f} | {r['zero_shot_top5']:.3f} -> "
            f"{r['top5']:.3f} | {accs} | {r['train_s_per_epoch']:.1f} | {r['train_images_per_s']:.1f} | "
            f"{r['eval_images_per_s']:.1f} | {r['peak_mem_bytes'] / 2**20:.0f} | {r['gflops']:.3f} | "
            f"{r['params'] / 1e3:.1f} | {r['new_tensors']} |"
        )
    lines += ["", f"Peak memory is {rows[0]['peak_mem_kind']}. Fine-tuning: {rows[0]['epochs']} epoch(s) of "
              f"{rows[0]['train_images']} images per mechanism.", ""]
    if export_failures:
        lines += ["Exports that failed verification (left out of the ONNX Runtime benchmark):", ""]
        lines += [f"- {failure}" for failure in export_failures] + [""]
    return "\n".join(lines)


def _write_study(s: Study, source: Path, runs: list[Path], evals: dict, command: str) -> Path:
    from .atomic import write_json, write_text
    from .environment import environment
    from .runs import load_model_card, load_summary

    card, summary = load_model_card(source), load_summary(source) or {}
    src = {"run": source.name, "img_size": card.img_size, "patch_size": card.patch_size, "top1": summary.get("top1")}
    rows, env = study_rows(runs, evals), environment()
    path = s.report_dir / "study.md"
    write_json(path.with_suffix(".json"), {"command": command, "environment": env, "walls_s": s.walls,
                                          "source": src, "rows": rows, "export_failures": s.export_failures})
    write_text(path, render_study(rows, src, s.walls, command, env, s.eval_limit, s.export_failures))
    return path


def run(out: Path, redo: bool, resolutions: list[int], eval_resolutions: Optional[list[int]] = None,
        pretrain_recipe: Path = PRETRAIN_RECIPE, recipe: Path = RECIPE, eval_limit: int = 200,
        bench_limit: int = 32, command: str = "python -m effvit_deploy.pipeline", bound: bool = False) -> dict[str, Path]:
    """All stages; returns where the study table, report, runs and error table are."""
    s = Study(out, redo, resolutions, eval_resolutions or resolutions[:1] + [r for r in resolutions[1:] if r <= 2 * resolutions[0]],
              pretrain_recipe, recipe, eval_limit, bench_limit)
    s.bound = bound
    start = time.monotonic()
    source = s.stage(1, "pretrain the exact ViT", lambda: _pretrain(s))
    runs = s.stage(2, "fine-tune every mechanism from it (exact is the control)", lambda: _finetune(s, source))
    evals = s.stage(3, f"evaluate at {s.eval_resolutions} px without retraining", lambda: _evaluate(s, runs))
    s.stage(4, "export to ONNX (fp32, fp16, int8) and verify against PyTorch", lambda: _export(s, runs))
    report = s.stage(5, f"benchmark on this machine at {resolutions} px", lambda: _bench(s, runs))
    exact = next(r for r in runs if r.name.endswith("-exact"))
    errors = s.stage(6, "approximation error vs exact attention", lambda: _approximation_error(s, exact))
    study = _write_study(s, source, runs, evals, command)
    from .demo import command as demo_command

    print(f"\nAll done in {time.monotonic() - start:.0f} s.")
    print(f"  study table:          {study}")
    print(f"  runs:                 {out}/")
    print(f"  benchmark report:     {report} (and {report.with_suffix('.html')})")
    print(f"  approximation error:  {errors}")
    print(f"  open the demo:        .venv/bin/{demo_command(runs)}")
    return {"study": study, "report": report, "errors": errors, "runs": out}


def _sizes(text: str) -> list[int]:
    return [int(r) for r in text.split(",") if r.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effvit_deploy.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where runs and the report go")
    parser.add_argument("--redo", action="store_true", help="retrain, re-export and re-measure everything")
    parser.add_argument("--resolutions", default="128,256,512",
                        help="benchmark resolutions in px, multiples of the patch size 8 (512 px = 4,096 tokens)")
    parser.add_argument("--eval-resolutions", default="128,192,256",
                        help="resolutions at which every fine-tuned model's accuracy is measured (first: the fine-tuning one)")
    parser.add_argument("--pretrain-recipe", type=Path, default=PRETRAIN_RECIPE, help="recipe of the exact source model")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="fine-tuning recipe (every mechanism)")
    parser.add_argument("--eval-limit", type=int, default=200, help="val images for the accuracy-vs-resolution table")
    parser.add_argument("--bound", action="store_true",
                        help="also benchmark each model's attention-free bound (the speed-up ceiling); doubles the benchmark")
    parser.add_argument("--bench-limit", type=int, default=32, help="val images per benchmarked cell's top-1")
    args = parser.parse_args(argv)
    try:
        run(args.out, args.redo, _sizes(args.resolutions), _sizes(args.eval_resolutions), args.pretrain_recipe,
            args.recipe, args.eval_limit, args.bench_limit, bound=args.bound,
            command=shlex.join(["python", "-m", "effvit_deploy.pipeline", *(argv if argv is not None else sys.argv[1:])]))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
