"""`effvit-bench`: latency, throughput, peak memory and accuracy of runs across backends and
resolutions, appended to a results file, and a report with plots (effvit_deploy.bench)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from .errors import EXIT_RUNTIME, Parser, existing_dir, output_dir, require, run_cli
from .options import parse_with_config, positive_list

EPILOG = """examples:
  # trained runs, every usable backend, report in bench-out/
  effvit-bench runs/digits-exact runs/digits-performer --resolutions 64,128 --batch-sizes 1,8
  # scaling study without trained runs: untrained ViT-S/16 variants (exported as needed)
  effvit-bench --model vit_small_patch16_224 --attention all --backends torch,onnxruntime \\
      --resolutions 224,384,512,768,1024,2048 --warmup 1 --repeats 5 --out benchmarks/results/cpu
  # one attention layer alone (ViT-S dims) over token counts
  effvit-bench --layer-only --model vit_small_patch16_224 --attention all --resolutions 224,512,1024,2048
  # a matrix from YAML (flags override it), or only re-draw the report of a results file
  effvit-bench --config serve/bench_cpu_vits.yaml
  effvit-bench --report-only --out benchmarks/results/cpu
"""


def _targets(text: str) -> dict[int, float]:
    """"1024:2,2048:5" -> {1024: 2.0, 2048: 5.0} (resolution px -> speed-up over exact)."""
    try:
        pairs = [item.split(":") for item in str(text).split(",") if item.strip()]
        targets = {int(px): float(x) for px, x in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected PX:SPEEDUP pairs like 1024:2,2048:5, got {text!r}") from None
    if not targets or min(targets) <= 0 or min(targets.values()) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive PX:SPEEDUP pairs, got {text!r}")
    return targets


def _names(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="effvit-bench", description=__doc__, epilog=EPILOG)
    p.add_argument("run_dirs", nargs="*", type=Path, help="run directories (model.json, weights, export/)")
    p.add_argument("--config", type=Path, help="YAML benchmark matrix (keys = long options, e.g. serve/bench_cpu_vits.yaml)")
    p.add_argument("--model", help="timm ViT for shape-only runs (untrained, accuracy not applicable) or --layer-only dims")
    p.add_argument("--attention", default="all", help="variants for --model / --layer-only: all or a comma list")
    p.add_argument("--backends", default="auto", help="auto, or a comma list of: torch, torch-compile, "
                   "torch-compile-cudagraphs (CUDA graphs, for batch-1 latency on a GPU), onnxruntime, "
                   "onnxruntime-cuda, onnxruntime-tensorrt, openvino, tensorrt, torch-tensorrt")
    p.add_argument("--resolutions", type=positive_list(int), default=[224, 384, 512, 768, 1024], help="square input sizes (px)")
    p.add_argument("--batch-sizes", type=positive_list(int), default=[1], help="batch sizes")
    p.add_argument("--precision", type=_names, default=["fp32"], help="fp32, fp16, bf16, int8, int8-static (comma list; "
                   "each backend runs the precisions its artifacts were exported in)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="results and report folder")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per configuration")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per configuration (at most)")
    p.add_argument("--max-time", type=float, default=20.0, help="timed-work budget per configuration in s (>= 3 repeats)")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a configuration after this many seconds")
    p.add_argument("--memory-cap", type=float, help="kill a configuration above this resident memory (GiB); "
                   "default 90%% of the memory available when it starts")
    p.add_argument("--thread-policy", choices=("default", "passive"), default="default",
                   help="default: each runtime's own thread settings (idle threads spin: fastest on a dedicated "
                   "machine); passive: idle threads sleep (OMP_WAIT_POLICY=PASSIVE, ONNX Runtime no spinning), "
                   "robust on a host shared with other jobs. Recorded in every row")
    p.add_argument("--bound", action=argparse.BooleanOptionalAction, default=True,
                   help="also time each model with attention replaced by a no-op token mixer (the attention-free "
                   "bound: the largest speed-up any mechanism could reach)")
    p.add_argument("--budgets", type=positive_list(float), help="latency budgets (ms) of the recommendation table, "
                   "e.g. 30,100,1000 (default: 10,30,100,300,1000,3000,10000)")
    p.add_argument("--speedup-target", type=_targets, default={}, metavar="PX:X,...",
                   help="your own speed-up goals to check in the report, e.g. 1024:2,2048:5 (none by default)")
    p.add_argument("--layer-only", action="store_true", help="time one attention layer alone over token counts")
    p.add_argument("--dim", type=int, help="--layer-only width (default: --model's, else 384)")
    p.add_argument("--heads", type=int, help="--layer-only heads (default: --model's, else 6)")
    p.add_argument("--accuracy", action=argparse.BooleanOptionalAction, default=True,
                   help="measure top-1 of each artifact on its backend (else the training summary's)")
    p.add_argument("--accuracy-limit", type=int, help="validation images for accuracy (default: all)")
    p.add_argument("--train-step", action="store_true", help="time training steps (forward, backward, AdamW; "
                   "--precision fp32 or bf16 autocast) instead of inference: ms/step, images/s, peak memory, epoch "
                   "time; writes OUT/train_step.jsonl and .md")
    p.add_argument("--epoch-images", type=int, default=126_689, help="--train-step: training images per epoch for "
                   "the epoch time (default: ImageNet-100's 126,689)")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report of OUT/results.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    """The command line over the `--config` matrix (`cli.options`)."""
    return parse_with_config(build_parser(), argv, "resolutions: [224]")


def _layer_dims(args: argparse.Namespace) -> tuple[int, int, int]:
    from ..bench.layer import VIT_S_DIM, VIT_S_HEADS

    dim, heads, patch = VIT_S_DIM, VIT_S_HEADS, 16
    if args.model:
        from ..models import build_model

        import torch

        with torch.device("meta"):
            model = build_model(args.model, attention="exact")
        dim, heads = model.embed_dim, model.blocks[0].attn.num_heads
        patch = int(model.patch_embed.patch_size[0])
    return args.dim or dim, args.heads or heads, patch


def _report_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {"speedup_targets": args.speedup_target}
    if args.budgets:
        options["budgets_ms"] = tuple(args.budgets)
    return options


def _train_step(args: argparse.Namespace) -> int:
    from ..bench.shapes import parse_attentions, shape_runs
    from ..bench.train_step import check_train_options, train_step_sweep, write_train_report

    check_train_options(args.precision, args.epoch_images)
    run_dirs = list(args.run_dirs) + (shape_runs(args.model, parse_attentions(args.attention), args.out / "cache")
                                      if args.model else [])
    results = train_step_sweep(run_dirs, args.resolutions, args.batch_sizes, args.precision, args.out, bound=args.bound,
                               warmup=args.warmup, repeats=args.repeats, max_time_s=args.max_time,
                               epoch_images=args.epoch_images, progress=not args.no_progress)
    print(f"results: {results}\nreport: {write_train_report(results, args.out)}")
    return 0


def _check_artifacts(run_dirs: list[Path], backends: str, precisions: list[str]) -> None:
    """Refuse (ArtifactError, exit 2) a damaged manifest or a stale, modified or escaping artifact
    the sweep would time, and warn about unfinished runs, before anything is measured."""
    import logging

    from ..backends import MANIFEST, find_artifact, get_backend, load_manifest
    from ..bench.matrix import resolve_backends
    from ..runs import unfinished_note

    formats = {get_backend(b).artifact for b in resolve_backends(backends)[0]} - {None}
    for run_dir in run_dirs:
        note = unfinished_note(run_dir)
        if note:
            logging.getLogger("effvit_deploy.bench").warning("%s; benchmarking it as it is", note)
        if not (run_dir / "export" / MANIFEST).is_file():
            continue
        load_manifest(run_dir)
        for fmt in sorted(formats):
            for precision in precisions:
                try:
                    find_artifact(run_dir, fmt, precision)
                except FileNotFoundError:
                    continue  # reported in its row as not exported


def _check_options(args: argparse.Namespace) -> None:
    """Every option, before any work: ranges, backends (exit 3 when a named one cannot run here),
    precisions, paths and the resolutions against each model's patch size."""
    from ..backends import BACKENDS, BackendUnavailable, backend_status
    from ..runs import load_model_card

    for option, value, low in (("--warmup", args.warmup, 0), ("--repeats", args.repeats, 1),
                               ("--accuracy-limit", args.accuracy_limit, 1), ("--dim", args.dim, 1),
                               ("--heads", args.heads, 1)):
        require(value is None or (isinstance(value, int) and value >= low), option,
                f"must be an integer >= {low}, got {value!r}")
    for option, value in (("--max-time", args.max_time), ("--timeout", args.timeout), ("--memory-cap", args.memory_cap)):
        require(value is None or (isinstance(value, (int, float)) and value > 0), option,
                f"must be a positive number, got {value!r}")
    names = _names(args.backends)
    require(bool(names), "--backends", f"is empty: give auto or a comma list of {', '.join(BACKENDS)}")
    if names != ["auto"]:
        unknown = [b for b in names if b not in BACKENDS]
        require(not unknown, "--backends", f"has unknown backend(s) {', '.join(unknown)}; valid: auto, {', '.join(BACKENDS)}")
        for name in names:
            reason = backend_status(name)
            if reason is not None:
                raise BackendUnavailable(f"--backends {name} cannot run here: {reason}")
    precisions = list(dict.fromkeys(p for b in BACKENDS.values() for p in b.precisions))
    unknown = [p for p in args.precision if p not in precisions]
    require(bool(args.precision) and not unknown, "--precision",
            f"{','.join(unknown) or 'is empty'}: valid precisions are {', '.join(precisions)}")
    output_dir("--out", args.out)
    if args.report_only:
        return
    patches: dict[str, int] = {}
    if args.layer_only or args.model:
        dim, heads, patch = _layer_dims(args)
        require(dim % heads == 0, "--dim", f"{dim} is not divisible by --heads {heads}")
        patches[args.model or "--layer-only"] = patch
    if not args.layer_only:
        for run_dir in args.run_dirs:
            if run_dir.exists():  # a missing one is named with the others below
                existing_dir("RUN_DIR", run_dir, "a training run folder")
            if (run_dir / "model.json").is_file():
                patches[str(run_dir)] = load_model_card(run_dir).patch_size
    for what, patch in patches.items():
        bad = [r for r in args.resolutions if r % patch or r < patch]
        require(not bad, "--resolutions", f"{','.join(map(str, bad))} is not a multiple of the patch size {patch} of "
                f"{what}: use e.g. {','.join(str(max(patch, round(r / patch) * patch)) for r in bad)}")


def run(args: argparse.Namespace) -> int:
    from ..bench import layer_subject, run_benchmark, shape_runs, write_report
    from ..bench.matrix import artifact_formats, resolve_backends
    from ..bench.results import RESULTS_JSONL, load_results
    from ..bench.shapes import parse_attentions

    _check_options(args)
    results = args.out / "results.jsonl"
    if args.report_only:
        print(f"report: {write_report(results, args.out, **_report_options(args))}")
        return 0
    run_dirs, layers = list(args.run_dirs), []
    if args.train_step:
        return _train_step(args)
    if args.layer_only:
        dim, heads, patch = _layer_dims(args)
        layers = [layer_subject(a, dim, heads, patch) for a in parse_attentions(args.attention)]
        run_dirs = []
    elif args.model:
        backends, _ = resolve_backends(args.backends)
        run_dirs += shape_runs(
            args.model, parse_attentions(args.attention), args.out / "cache",
            formats=artifact_formats(backends), precisions=args.precision,
            min_res=min(args.resolutions), max_res=max(args.resolutions), max_batch=max(max(args.batch_sizes), 2),
        )
    not_runs = [str(d) for d in args.run_dirs if not (d / "model.json").is_file()]
    if not_runs:
        raise FileNotFoundError(f"not training run directories (no model.json): {', '.join(not_runs)}; "
                                "make them with effvit-train, or benchmark untrained variants with --model")
    _check_artifacts(args.run_dirs, args.backends, args.precision)  # before the sweep writes anything
    if not run_dirs and not layers:
        raise ValueError("nothing to benchmark: give RUN_DIR(s), --model NAME, or --layer-only")
    before = len(load_results(args.out / RESULTS_JSONL)) if (args.out / RESULTS_JSONL).is_file() else 0
    results = run_benchmark(
        run_dirs, args.backends, args.resolutions, args.batch_sizes, args.precision, args.out,
        layers=layers, warmup=args.warmup, repeats=args.repeats, max_time_s=args.max_time,
        timeout_s=args.timeout, memory_cap_bytes=int(args.memory_cap * 2**30) if args.memory_cap else None,
        accuracy=args.accuracy, accuracy_limit=args.accuracy_limit, thread_policy=args.thread_policy,
        bound=args.bound, progress=not args.no_progress,
    )
    print(f"results: {results}")
    print(f"report: {write_report(results, args.out, **_report_options(args))}")
    rows = load_results(results)[before:]
    if rows and not any(r["status"] == "ok" for r in rows):
        first = rows[0]
        print(f"effvit-bench: error: none of the {len(rows)} configurations ran (first: {first['run']} "
              f"{first['backend']} {first['status']}: {first.get('reason')}); see {results}", file=sys.stderr)
        return EXIT_RUNTIME
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    return run_cli("effvit-bench", lambda: run(args), args.debug)


if __name__ == "__main__":
    sys.exit(main())
