"""The main job (`make demo`): the attention-swap study, in miniature, on bundled data.

Take a ViT trained with exact attention, swap in each mechanism, fine-tune it with the same
budget (exact included, as the control) and compare accuracy, time, memory and FLOPs as the
resolution grows, on cluttered digits (one handwritten digit to find among fragments of others,
at a fixed pixel scale, so a larger canvas is a larger scene with the same per-patch content):

    1. pretrain   the exact ViT from scratch, cheaply on a small canvas, then at the study
                  resolution (the profile's pretrain recipes): the source model
    2. fine-tune  every mechanism from it at the same resolution (init_from): zero-shot swap
                  accuracy (epoch 0) and fine-tuned accuracy
    3. evaluate   each fine-tuned model at the study resolution and larger ones, no retraining:
                  top-1 with a 95% Wilson interval on the whole validation split, and McNemar's
                  paired test against exact attention on the same images (effvit_deploy.evaluation)
    4. export     each fine-tuned run to ONNX fp32, fp16 and INT8, verified against PyTorch
    5. bench      latency and memory per resolution, PyTorch and ONNX Runtime, up to 4,096+
                  tokens; the report (Pareto front, recommendations) takes its top-1 from stage 3
    6. error      each approximation's error vs exact attention on the study's exact model

Profiles: `cpu` (a 4-block, 96-wide ViT with 8-px patches at 128 px = 256 tokens; fits the
2-core budget of `make demo`) and `gpu` (ViT-S/16-sized: 12 blocks, 384 wide, 8-px patches at
256 px = 1,024 tokens, bf16 autocast, more data and epochs), chosen by `--profile auto` from
whether CUDA is visible. Same stages, same outputs.

A second run reuses what is built, and rebuilds a stage whose inputs changed: a run whose
recipe or options differ from its config.yaml is retrained, and the evaluation and benchmark
are measured again when the runs or the resolutions differ from those they recorded. `--redo`
rebuilds everything. The study table (report/study.md, .json) records the command, machine,
git commit and the wall time of every stage.

    python -m effvit_deploy.pipeline [--out runs] [--profile auto|cpu|gpu] [--redo]
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

# Before torch loads (imports below are deferred): idle OpenMP threads sleep instead of spinning.
# Measured on the 2-core host shared with other jobs (load ~8): training at 128 px ran 9.5 img/s
# with 2 spinning threads, 26.9 with 2 passive ones, 26.5 with one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

T = TypeVar("T")
STAGES = 6
FINGERPRINT = "inputs.json"


@dataclass(frozen=True)
class Profile:
    """What one study runs: recipes, resolutions (px) and how many validation images score a
    cell (None: the whole validation split, `data.val_size` of the recipe)."""

    name: str
    pretrain_recipes: tuple[Path, ...]  # exact attention, each from the previous one's weights; the last: the source
    recipe: Path
    resolutions: tuple[int, ...]  # benchmarked (latency, memory)
    eval_resolutions: tuple[int, ...]  # top-1 measured; the first is the fine-tuning resolution
    eval_limit: Optional[int] = None
    export_limit: int = 500  # images per exported artifact's top-1 (each precision, ONNX Runtime)
    overrides: tuple[str, ...] = field(default=())  # recipe overrides for both training stages


PROFILES = {
    "cpu": Profile("cpu", (Path("train/cluttered_pretrain.yaml"), Path("train/cluttered_source.yaml")),
                   Path("train/cluttered.yaml"), (128, 192, 512), (128, 160, 192)),
    "gpu": Profile("gpu", (Path("train/cluttered_gpu_pretrain.yaml"), Path("train/cluttered_gpu_source.yaml")),
                   Path("train/cluttered_gpu.yaml"), (256, 384, 512), (256, 320, 384), export_limit=1000),
}


def choose_profile(name: str) -> Profile:
    """PROFILES[name]; "auto" is "gpu" when CUDA is visible, else "cpu". ValueError if unknown."""
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose auto, {', '.join(PROFILES)}")
    return PROFILES[name]


class Study:
    """Options, per-stage wall times and where things go, for one pipeline run."""

    def __init__(self, out: Path, redo: bool, profile: Profile) -> None:
        self.out, self.redo, self.profile = out, redo, profile
        self.resolutions, self.eval_resolutions = list(profile.resolutions), list(profile.eval_resolutions)
        self.recipe = profile.recipe
        self.eval_limit, self.export_limit = profile.eval_limit, profile.export_limit
        self.report_dir = out / "report"
        self.bound = False  # the attention-free bound doubles the benchmark's models: opt in with --bound
        self.walls: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}  # user + system CPU time of this process and its waited-for children
        self.export_failures: list[str] = []

    def stage(self, number: int, title: str, work: Callable[[], T]) -> T:
        print(f"\n=== [{number}/{STAGES}] {title}", flush=True)
        start, cpu = time.monotonic(), _cpu_seconds()
        result = work()
        key = title.split()[0]
        self.walls[key] = round(time.monotonic() - start, 1)
        self.cpu_s[key] = round(_cpu_seconds() - cpu, 1)
        print(f"=== [{number}/{STAGES}] done in {self.walls[key]:.0f} s ({self.cpu_s[key]:.0f} s of CPU)", flush=True)
        return result


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children: with the wall time,
    how much a stage was slowed by other jobs on a shared machine."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _run_identity(run: Path) -> dict[str, Any]:
    """What a later stage's result depends on: the run's config and its trained weights' summary."""
    return {"run": str(run), "config": (run / "config.yaml").read_text(), "summary": (run / "summary.json").read_text()}


def _stamp(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"digest": _digest(inputs), "options": inputs.get("options")}


def _is_current(directory: Path, inputs: dict[str, Any]) -> bool:
    """True when `directory` holds a result built from exactly these inputs (`stamps.is_current`)."""
    from .stamps import is_current

    return is_current(directory / FINGERPRINT, _stamp(inputs),
                      covers=lambda recorded, wanted: recorded.get("digest") == wanted["digest"])


def _record_inputs(directory: Path, inputs: dict[str, Any]) -> None:
    from .stamps import write_stamp

    write_stamp(directory / FINGERPRINT, _stamp(inputs))


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
    """Train the exact source model: each pretrain recipe from the previous one's weights
    (e.g. cheaply at a small canvas, then at the study resolution); returns the last run."""
    previous: Optional[Path] = None
    for recipe in s.profile.pretrain_recipes:
        init = [f"init_from={previous.resolve()}"] if previous is not None else []
        previous = train_current(recipe, "exact", s.out, [*s.profile.overrides, *init], s.redo)
    if previous is None:
        raise ValueError("a profile needs at least one pretrain recipe")
    return previous


def _finetune(s: Study, source: Path) -> list[Path]:
    from .attention import ATTENTIONS

    init = [*s.profile.overrides, f"init_from={source.resolve()}"]
    return [train_current(s.recipe, attention, s.out, init, s.redo) for attention in ATTENTIONS]


def accuracy_at(run: Path, resolution: int, limit: Optional[int]) -> Any:
    """`evaluation.Top1` of a run's best weights (PyTorch) on the validation subset of `limit`
    images (None: all) at `resolution` px."""
    import torch

    from .evaluation import top1_of
    from .runs import load_run

    model, card = load_run(run)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def predict(images: Any) -> Any:
        with autocast:
            return model(images.to(device)).float().cpu()

    return top1_of(predict, card, limit, resolution, batch_size=64)


def _evaluate(s: Study, runs: list[Path]) -> dict[str, dict[str, dict]]:
    """{run name: {resolution: Top1.as_dict() + per-image "correct" string}}, cached in
    report/eval/eval.json while its inputs hold."""
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
            result = accuracy_at(run, res, s.eval_limit)
            table[run.name][str(res)] = {**result.as_dict(), "correct": "".join("1" if c else "0" for c in result.correct)}
            print(f"  {run.name:>20} {res:>4} px top-1 {result.text} ({time.monotonic() - start:.0f} s)", flush=True)
    write_json(directory / "eval.json", table)
    _record_inputs(directory, inputs)
    return table


def _export(s: Study, runs: list[Path]) -> None:
    """fp32, then fp16, then INT8, each verified against PyTorch. An artifact that misses its
    parity tolerance is reported (study table and log) and left out with the ones after it; the
    benchmark then records that run's ONNX cells as skipped, and the rest of the study goes on."""
    from .evaluation import top1_text
    from .export import export_run
    from .export.verify import ParityError

    steps = ((("fp32",), False), (("fp32", "fp16"), False), (("fp32", "fp16"), True))
    for run in runs:
        manifest = {"artifacts": []}
        for precisions, int8 in steps:
            try:
                manifest = export_run(run, formats=("onnx",), precisions=precisions, int8=int8,
                                      max_res=max(s.resolutions), max_batch=8, force=s.redo, eval_limit=s.export_limit)
            except ParityError as exc:
                s.export_failures.append(f"{run.name}: {exc}")
                print(f"  {run.name:>18} not exported: {exc}", flush=True)
                break
        for entry in manifest["artifacts"]:
            worst = max(p["max_abs"] for key, p in entry["parity"].items() if key != "tolerance")
            acc = entry.get("accuracy") or {}
            top1 = f"  top-1 {top1_text(acc['top1'], acc['n'])}" if acc.get("top1") is not None and acc.get("n") else ""
            print(f"  {run.name:>18} {entry['format']}/{entry['precision']:<11} max |logit error| {worst:.2e}{top1}", flush=True)


def _bench(s: Study, runs: list[Path], evals: dict[str, dict[str, dict]]) -> Path:
    """Latency and memory; top-1 comes from the evaluation stage (PyTorch fp32 rows), not from
    a second, smaller measurement."""
    from .bench import run_benchmark, write_report

    directory = s.report_dir
    inputs = {"options": {"resolutions": s.resolutions, "bound": s.bound},
              "runs": [_run_identity(r) for r in runs]}
    results = directory / "results.jsonl"
    if s.redo or not results.is_file() or not _is_current(directory, inputs):
        for stale in (results, results.with_suffix(".csv")):
            stale.unlink(missing_ok=True)
        shutil.rmtree(directory / "cache", ignore_errors=True)
        results = run_benchmark(runs, backends=("torch", "onnxruntime"), resolutions=s.resolutions,
                                batch_sizes=(1,), precisions=("fp32",), out_dir=directory,
                                warmup=1, repeats=5, max_time_s=2.0, timeout_s=300.0,
                                accuracy=False, thread_policy="passive", bound=s.bound)
        _record_inputs(directory, inputs)
    else:
        print(f"  reusing {results} (same runs and resolutions; --redo to measure again)")
    accuracy = {(name, int(res)): {k: v for k, v in acc.items() if k != "correct"}
                for name, by_res in evals.items() for res, acc in by_res.items()}
    return write_report(results, directory, accuracy=accuracy)


def _approximation_error(s: Study, exact_run: Path) -> Path:
    from .approximation import error_table
    from .runs import load_run

    model, card = load_run(exact_run)
    label = f"run {exact_run.name} ({card.model}, fine-tuned on {card.data.get('name')} at {card.img_size} px)"
    return error_table(model, card, card.data, s.eval_resolutions, s.report_dir / "approximation_error.md",
                       label, "python -m effvit_deploy.pipeline", images=8)


def paired_tests(evals: dict[str, dict[str, dict]], exact: str) -> dict[str, dict[str, dict]]:
    """{run: {resolution: McNemar vs the exact run on the same images}} (evaluation.mcnemar)."""
    from .evaluation import mcnemar

    out: dict[str, dict[str, dict]] = {}
    for name, by_res in evals.items():
        if name == exact:
            continue
        out[name] = {res: mcnemar([c == "1" for c in acc["correct"]], [c == "1" for c in evals[exact][res]["correct"]])
                     for res, acc in by_res.items() if res in evals.get(exact, {})}
    return out


def study_rows(runs: list[Path], evals: dict[str, dict[str, dict]]) -> list[dict[str, Any]]:
    """One row per fine-tuned mechanism, from its summary.json and the evaluation stage."""
    from .runs import load_summary
    from .train.config import read_yaml

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
    from .bench.markdown import md_table

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
    from .bench.markdown import md_table

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

    from .demo.examples import validation_examples
    from .runs import load_model_card

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
    from .data.subset import validation_subset

    return list(validation_subset(card, limit).indices)


def _write_study(s: Study, source: Path, runs: list[Path], evals: dict, command: str) -> Path:
    from .atomic import write_json, write_text
    from .environment import environment
    from .runs import load_model_card, load_summary

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


def run(out: Path, redo: bool, profile: Profile, command: str = "python -m effvit_deploy.pipeline",
        bound: bool = False) -> dict[str, Path]:
    """All stages; returns where the study table, report, runs and error table are."""
    s = Study(out, redo, profile)
    s.bound = bound
    print(f"profile {profile.name}: {' then '.join(map(str, profile.pretrain_recipes))} then {profile.recipe}, "
          f"top-1 at {s.eval_resolutions} px, "
          f"latency at {s.resolutions} px", flush=True)
    start = time.monotonic()
    source = s.stage(1, "pretrain the exact ViT", lambda: _pretrain(s))
    runs = s.stage(2, "fine-tune every mechanism from it (exact is the control)", lambda: _finetune(s, source))
    evals = s.stage(3, f"evaluate at {s.eval_resolutions} px without retraining", lambda: _evaluate(s, runs))
    s.stage(4, "export to ONNX (fp32, fp16, int8) and verify against PyTorch", lambda: _export(s, runs))
    report = s.stage(5, f"benchmark on this machine at {s.resolutions} px", lambda: _bench(s, runs, evals))
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


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(r) for r in text.split(",") if r.strip())


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effvit_deploy.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where runs and the report go")
    parser.add_argument("--profile", default="auto", help="auto (gpu when CUDA is visible, else cpu), cpu or gpu")
    parser.add_argument("--redo", action="store_true", help="retrain, re-export and re-measure everything")
    parser.add_argument("--resolutions", help="benchmark resolutions in px, multiples of the patch size 8 "
                                              "(default: the profile's; cpu: 128,192,512 = 256 to 4,096 tokens)")
    parser.add_argument("--eval-resolutions", help="resolutions at which every fine-tuned model's top-1 is measured "
                                                   "(first: the fine-tuning one; default: the profile's)")
    parser.add_argument("--pretrain-recipes", type=lambda t: tuple(Path(x) for x in t.split(",")),
                        help="comma list of exact-attention recipes, each from the previous one's weights; the last "
                             "gives the source model (default: the profile's)")
    parser.add_argument("--recipe", type=Path, help="fine-tuning recipe, every mechanism (default: the profile's)")
    parser.add_argument("--eval-limit", type=int, help="validation images per top-1 cell (default: the whole split)")
    parser.add_argument("--bound", action="store_true",
                        help="also benchmark each model's attention-free bound (the speed-up ceiling); doubles the benchmark")
    parser.add_argument("--readme-table", type=Path, metavar="STUDY_JSON",
                        help="print the README's study table from a study.json and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides for both training stages, e.g. epochs=2 data.train_size=4000")
    args = parser.parse_args(argv)
    if args.readme_table:
        print(readme_table(json.loads(args.readme_table.read_text())))
        return 0
    try:
        profile = choose_profile(args.profile)
        changes: dict[str, Any] = {"overrides": tuple(args.overrides)}
        for key in ("pretrain_recipes", "recipe", "eval_limit"):
            if getattr(args, key) is not None:
                changes[key] = getattr(args, key)
        for key in ("resolutions", "eval_resolutions"):
            if getattr(args, key):
                changes[key] = _sizes(getattr(args, key))
        run(args.out, args.redo, replace(profile, **changes), bound=args.bound,
            command=shlex.join(["python", "-m", "effvit_deploy.pipeline", *(argv if argv is not None else sys.argv[1:])]))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
