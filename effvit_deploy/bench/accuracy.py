"""Top-1 accuracy of one artifact on its run's validation set, on its backend, at one resolution.

Each point of the accuracy-vs-latency plot and each recommendation cell is then measured where
it is timed: an fp16 engine, an INT8 graph or a resolution other than the training one can lose
accuracy that the PyTorch training summary would not show. The data set is the one the run was
trained for (`effvit_deploy.data.build_eval_dataset` with the run's model card: data set,
normalisation, interpolation, crop), resized for the resolution measured; unreadable images
are skipped. A limit scores the validation subset of that many evenly spaced images
(`evaluation.top1_of`, as export and the demo do), so rows with the same limit compare the same
images.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from ..backends import Runner
from ..evaluation import NonFiniteLogits, Top1, top1_of
from ..runs import ModelCard, load_summary

# Runs made without a data set: untrained shape-only runs and the attention-free bound.
NOT_APPLICABLE = "not applicable: no data set (an untrained shape-only run, or the attention-free bound: a latency reference)"


def measure_accuracy(runner: Runner, card: ModelCard, limit: Optional[int] = None, batch_size: int = 16,
                     resolution: Optional[int] = None) -> Top1:
    """Top-1 (with image count and interval, `evaluation.Top1`) of `runner` over the validation
    subset of `limit` images (`data.subset`; all when None), preprocessed for `resolution` px
    (default: the training resolution). Raises ValueError when no image could be scored."""
    return top1_of(lambda images: runner(images.numpy().astype(np.float32)), card, limit, resolution, batch_size)


def artifact_accuracy(
    run_dir: Any, card: ModelCard, runner_factory: Callable[[], Runner], enabled: bool, limit: Optional[int],
    resolution: Optional[int] = None,
) -> dict[str, Any]:
    """Row fields for one run x backend x precision x resolution: `top1` (or None),
    `top1_source` (where it came from / why it is missing), `top1_resolution` and `top1_images`.

    With measurement disabled or impossible, the run's training summary (PyTorch, at the
    training resolution) stands in, labelled as such, so a report can still be drawn; the
    report then marks the cell as not measured at its own resolution.
    """
    if not card.data:
        return {"top1": None, "top1_source": NOT_APPLICABLE, "top1_resolution": None, "top1_images": None}
    summary = load_summary(run_dir) or {}
    fallback = {"top1": summary.get("top1"), "top1_resolution": card.img_size if summary.get("top1") is not None else None,
                "top1_images": None}
    if not enabled:
        source = "training summary (PyTorch); --no-accuracy" if fallback["top1"] is not None else "not measured (--no-accuracy)"
        return {**fallback, "top1_source": source}
    try:
        result = measure_accuracy(runner_factory(), card, limit, resolution=resolution)
        return {"top1": result.top1, "top1_source": "measured on this backend", "top1_resolution": resolution or card.img_size,
                "top1_images": result.images, "top1_ci95": list(result.interval)}
    except NonFiniteLogits as exc:  # never stand in the training figure for an artifact that is broken
        return {"top1": None, "top1_source": f"failed: {exc}", "top1_resolution": None, "top1_images": None}
    except Exception as exc:  # the sweep goes on; the reason is recorded
        reason = f"{type(exc).__name__}: {exc}"[:300]
        if fallback["top1"] is not None:
            return {**fallback, "top1_source": f"training summary (PyTorch); measuring failed: {reason}"}
        return {**fallback, "top1_source": f"not measured: {reason}"}
