"""Stage 3, benchmark: latency, throughput, memory and accuracy across backends and resolutions.

    run_benchmark(run_dirs, backends, resolutions, batch_sizes, precisions, out_dir) -> results.jsonl
    write_report(results_path, out_dir) -> report.md (and report.html, PNG plots)

harness.py times one runner, memory.py measures its peak memory, worker.py measures one
configuration (in a fresh process), matrix.py sweeps the matrix, bound.py builds the
attention-free bound every speed-up is read against, accuracy.py scores top-1 per resolution,
results.py writes the results file with the environment, analysis.py reads the rows (latest
rows, series, scaling laws, crossovers, Pareto fronts, display order), plots.py draws them,
report.py says what each section of the report holds and document.py renders it as Markdown
and HTML. train_step.py times training steps (forward, backward, AdamW)
with the same harness, into train_step.jsonl beside the results file.
"""
from __future__ import annotations

from typing import Any

__all__ = ["layer_subject", "run_benchmark", "shape_runs", "write_report"]


def __getattr__(name: str) -> Any:
    """Lazy exports: a worker process imports this package without matplotlib or the sweep."""
    if name in ("layer_subject", "run_benchmark"):
        from . import matrix

        return getattr(matrix, name)
    if name == "write_report":
        from .report import write_report

        return write_report
    if name == "shape_runs":
        from .shapes import shape_runs

        return shape_runs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
