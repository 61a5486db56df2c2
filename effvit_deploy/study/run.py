"""Running the attention-swap study: its profiles, its six stages and what each one reuses.

A stage reuses its earlier result while its inputs hold (`stamps.is_current` over a digest of
the runs' configs and summaries and the stage's options); `--redo` rebuilds everything. The
study's tables are written by `effvit_deploy.study.render`, its command line is
`effvit_deploy.cli.study`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

# Before torch loads (imports below are deferred): idle OpenMP threads sleep instead of spinning.
# Measured on the 2-core host shared with other jobs (load ~8): training at 128 px ran 9.5 img/s
# with 2 spinning threads, 26.9 with 2 passive ones, 26.5 with one.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .render import write_study  # noqa: E402

COMMAND = "python -m effvit_deploy.pipeline"  # how `make demo` runs the study; recorded in its tables

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
    """Options, per-stage wall times and where things go, for one study run."""

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
    from ..stamps import is_current

    return is_current(directory / FINGERPRINT, _stamp(inputs),
                      covers=lambda recorded, wanted: recorded.get("digest") == wanted["digest"])


def _record_inputs(directory: Path, inputs: dict[str, Any]) -> None:
    from ..stamps import write_stamp

    write_stamp(directory / FINGERPRINT, _stamp(inputs))


def train_current(recipe: Path, attention: str, out: Path, overrides: list[str], redo: bool) -> Path:
    """Train one variant unless OUT/STEM-ATTENTION is complete with this very config; a complete
    run whose config.yaml differs (another recipe, other options) is trained again."""
    from ..train import is_complete, load_config, train_all
    from ..recipes import read_yaml

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
    from ..attention import ATTENTIONS

    init = [*s.profile.overrides, f"init_from={source.resolve()}"]
    return [train_current(s.recipe, attention, s.out, init, s.redo) for attention in ATTENTIONS]


def accuracy_at(run: Path, resolution: int, limit: Optional[int]) -> Any:
    """`evaluation.Top1` of a run's best weights (PyTorch) on the validation subset of `limit`
    images (None: all) at `resolution` px."""
    import torch

    from ..evaluation import top1_of
    from ..runs import load_run

    model, card = load_run(run)
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def predict(images: Any) -> Any:
        with autocast:
            return model(images.to(device)).float().cpu()

    return top1_of(predict, card, limit, resolution, batch_size=64)


def evaluate(s: Study, runs: list[Path]) -> dict[str, dict[str, dict]]:
    """{run name: {resolution: Top1.as_dict() + per-image "correct" string}}, cached in
    report/eval/eval.json while its inputs hold."""
    from ..atomic import write_json

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
    from ..evaluation import top1_text
    from ..export import export_run
    from ..export.verify import ParityError

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
    from ..bench import run_benchmark, write_report

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
    from ..approximation import error_table
    from ..runs import load_run

    model, card = load_run(exact_run)
    label = f"run {exact_run.name} ({card.model}, fine-tuned on {card.data.get('name')} at {card.img_size} px)"
    return error_table(model, card, card.data, s.eval_resolutions, s.report_dir / "approximation_error.md",
                       label, COMMAND, images=8)


def run(out: Path, redo: bool, profile: Profile, command: str = COMMAND,
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
    evals = s.stage(3, f"evaluate at {s.eval_resolutions} px without retraining", lambda: evaluate(s, runs))
    s.stage(4, "export to ONNX (fp32, fp16, int8) and verify against PyTorch", lambda: _export(s, runs))
    report = s.stage(5, f"benchmark on this machine at {s.resolutions} px", lambda: _bench(s, runs, evals))
    exact = next(r for r in runs if r.name.endswith("-exact"))
    errors = s.stage(6, "approximation error vs exact attention", lambda: _approximation_error(s, exact))
    study = write_study(s, source, runs, evals, command)
    from ..demo import command as demo_command

    print(f"\nAll done in {time.monotonic() - start:.0f} s.")
    print(f"  study table:          {study}")
    print(f"  runs:                 {out}/")
    print(f"  benchmark report:     {report} (and {report.with_suffix('.html')})")
    print(f"  approximation error:  {errors}")
    print(f"  open the demo:        .venv/bin/{demo_command(runs)}")
    return {"study": study, "report": report, "errors": errors, "runs": out}

