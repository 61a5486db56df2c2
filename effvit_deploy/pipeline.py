"""The main job (`make demo`): the whole toolkit on the bundled digits data, end to end.

    1. train    all five attention variants on scikit-learn's digits (train/digits.yaml)
    2. export   each run to ONNX fp32, fp16 and INT8, every artifact verified against PyTorch
    3. bench    latency, throughput, memory and accuracy on this machine, PyTorch and ONNX
                Runtime, across resolutions; the report (plots, tables, recommendation)
    4. error    each approximation's error vs exact attention on the exact model's activations

Each stage reuses what a previous run already built (complete runs, verified artifacts, a
results file) unless --redo is given. The last lines say where everything is and the one
command that opens the Gradio demo on these models.

    python -m effvit_deploy.pipeline [--out runs] [--redo]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Optional, TypeVar

from .attention import ATTENTIONS

T = TypeVar("T")
RECIPE = Path("train/digits.yaml")


def _stage(number: int, title: str, work: Callable[[], T]) -> T:
    print(f"\n=== [{number}/4] {title}", flush=True)
    start = time.monotonic()
    result = work()
    print(f"=== [{number}/4] done in {time.monotonic() - start:.0f} s", flush=True)
    return result


def _train(recipe: Path, out: Path, redo: bool) -> list[Path]:
    from .train import train_all

    return train_all(recipe, list(ATTENTIONS), out, redo=redo)


def _export(runs: list[Path], max_res: int, redo: bool) -> None:
    from .export import export_run

    for run in runs:
        manifest = export_run(run, formats=("onnx",), precisions=("fp32", "fp16"), int8=True,
                              max_res=max_res, max_batch=8, force=redo)
        for entry in manifest["artifacts"]:
            worst = max(p["max_abs"] for key, p in entry["parity"].items() if key != "tolerance")
            print(f"  {run.name:>18} {entry['format']}/{entry['precision']:<5} "
                  f"max |logit error| {worst:.2e}  top-1 {entry['accuracy']['top1']:.3f}", flush=True)


def _bench(runs: list[Path], report_dir: Path, resolutions: list[int], redo: bool) -> Path:
    from .bench import run_benchmark, write_report

    results = report_dir / "results.jsonl"
    if redo or not results.is_file():
        if results.is_file():
            results.unlink()
            results.with_suffix(".csv").unlink(missing_ok=True)
        results = run_benchmark(runs, backends=("torch", "onnxruntime"), resolutions=resolutions,
                                batch_sizes=(1,), precisions=("fp32",), out_dir=report_dir,
                                warmup=2, repeats=10, max_time_s=3.0, timeout_s=300.0)
    else:
        print(f"  reusing {results} (--redo to measure again)")
    return write_report(results, report_dir)


def _approximation_error(exact_run: Path, report_dir: Path, resolutions: list[int]) -> Path:
    from .approximation import error_table
    from .runs import load_run

    model, card = load_run(exact_run)
    label = f"run {exact_run.name} ({card.model}, trained on {card.data.get('name')})"
    return error_table(model, card, card.data, resolutions, report_dir / "approximation_error.md",
                       label, "python -m effvit_deploy.pipeline")


def run(out: Path, redo: bool, resolutions: list[int], recipe: Path = RECIPE) -> dict[str, Path]:
    """All four stages; returns where the report, runs and error table are."""
    start = time.monotonic()
    report_dir = out / "report"
    runs = _stage(1, "train all five attention variants on digits", lambda: _train(recipe, out, redo))
    _stage(2, "export to ONNX (fp32, fp16, int8) and verify against PyTorch",
           lambda: _export(runs, max(resolutions), redo))
    report = _stage(3, f"benchmark on this machine at {resolutions} px", lambda: _bench(runs, report_dir, resolutions, redo))
    exact = next(r for r in runs if r.name.endswith("-exact"))
    errors = _stage(4, "approximation error vs exact attention",
                    lambda: _approximation_error(exact, report_dir, resolutions[:3]))
    from .demo import command

    demo = command(runs)
    print(f"\nAll done in {time.monotonic() - start:.0f} s.")
    print(f"  runs:                 {out}/")
    print(f"  benchmark report:     {report} (and {report.with_suffix('.html')})")
    print(f"  approximation error:  {errors}")
    print(f"  open the demo:        .venv/bin/{demo}")
    return {"report": report, "errors": errors, "runs": out}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m effvit_deploy.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where runs and the report go")
    parser.add_argument("--redo", action="store_true", help="retrain, re-export and re-measure everything")
    parser.add_argument("--resolutions", default="32,64,128,256,512",
                        help="benchmark resolutions in px (multiples of the digits model's patch size 8)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="training recipe")
    args = parser.parse_args(argv)
    resolutions = [int(r) for r in args.resolutions.split(",")]
    run(args.out, args.redo, resolutions, args.recipe)
    return 0


if __name__ == "__main__":
    sys.exit(main())
