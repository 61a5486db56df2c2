"""Top-1 accuracy of one artifact on its run's validation set, on the backend it describes.

Each point of the accuracy-vs-latency plot is then measured where it is timed: an fp16 engine
or an ONNX graph can lose accuracy that the PyTorch training summary would not show. The data
set is the one the run was trained for (`effvit_deploy.data.build_eval_dataset` with the run's
model card: data set, size, normalisation, interpolation, crop); unreadable images are skipped.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..backends import Runner
from ..runs import ModelCard, load_summary

NOT_APPLICABLE = "not applicable: untrained shape-only run (no data set)"


def measure_accuracy(runner: Runner, card: ModelCard, limit: Optional[int] = None, batch_size: int = 16) -> float:
    """Top-1 of `runner` over the validation subset of `limit` images (`data.subset`; all when None)."""
    import torch

    from ..data import collate_skip_bad, subset

    dataset = subset.validation_subset(card, limit)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=collate_skip_bad)
    correct = total = 0
    for images, labels, _skipped in loader:
        if len(labels) == 0:
            continue
        logits = runner(images.numpy().astype(np.float32))
        correct += int((logits.argmax(1) == labels.numpy()).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f"the validation set of {card.data} is empty")
    return correct / total


def artifact_accuracy(
    run_dir: Any, card: ModelCard, runner_factory, enabled: bool, limit: Optional[int]
) -> tuple[Optional[float], str]:
    """(top-1 or None, where it came from / why it is missing) for one run x backend x precision.

    With measurement disabled or impossible, the run's training summary (PyTorch) stands in,
    labelled as such, so a report can still be drawn.
    """
    if not card.data:
        return None, NOT_APPLICABLE
    summary = load_summary(run_dir) or {}
    fallback = summary.get("top1")
    if not enabled:
        return fallback, "training summary (PyTorch); --no-accuracy" if fallback is not None else "not measured (--no-accuracy)"
    try:
        return measure_accuracy(runner_factory(), card, limit), "measured on this backend"
    except Exception as exc:  # the sweep goes on; the reason is recorded
        reason = f"{type(exc).__name__}: {exc}"[:300]
        if fallback is not None:
            return fallback, f"training summary (PyTorch); measuring failed: {reason}"
        return None, f"not measured: {reason}"
