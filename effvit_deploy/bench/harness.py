"""Timing one runner: warm-up, timed repeats with the device synchronised, latency statistics.

Follows timm's `benchmark.py` and `torch.utils.benchmark` habits: untimed warm-up calls first
(allocator growth, lazy initialisation, compilation), then each repeat timed around
`run` + `synchronize`, so asynchronous GPU work is inside the clock. On CUDA the clock is a pair
of CUDA events; elsewhere `time.perf_counter`. The input is prepared once, outside the clock.
"""
from __future__ import annotations

import time
from typing import Any, Optional, Sequence

import numpy as np

from ..backends import Runner

PERCENTILES = (90, 99)


def latency_stats(samples_s: Sequence[float], batch: int) -> dict[str, float]:
    """Latency statistics in milliseconds and throughput (images/s at the median latency)."""
    if len(samples_s) == 0:
        raise ValueError("no timing samples: repeats must be >= 1")
    ms = np.asarray(samples_s, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    stats = {
        "latency_median_ms": median,
        **{f"latency_p{p}_ms": float(np.percentile(ms, p)) for p in PERCENTILES},
        "latency_mean_ms": float(ms.mean()),
        "latency_std_ms": float(ms.std(ddof=1)) if len(ms) > 1 else 0.0,
        "latency_min_ms": float(ms.min()),
        "latency_max_ms": float(ms.max()),
        "throughput_ips": batch / (median / 1e3),
        "repeats_done": len(ms),
    }
    return stats


class _Clock:
    """Seconds for one call: CUDA events on a CUDA runner, else the host's monotonic clock."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        if self.cuda:
            import torch

            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def time(self, runner: Runner, x: Any) -> float:
        if self.cuda:
            start, end = self._events
            start.record()
            runner.run(x)
            runner.synchronize()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t0 = time.perf_counter()
        runner.run(x)
        runner.synchronize()
        return time.perf_counter() - t0


def time_runner(
    runner: Runner,
    batch: np.ndarray,
    *,
    warmup: int = 3,
    repeats: int = 20,
    max_time_s: Optional[float] = None,
    min_repeats: int = 3,
) -> list[float]:
    """Per-call latencies in seconds after `warmup` untimed calls.

    `max_time_s` bounds the timed work: once it is spent, timing stops after at least
    `min_repeats` calls, so one slow configuration (exact attention at 16k tokens) cannot
    eat the sweep's budget while a fast one still gets all `repeats`.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    x = runner.prepare(batch)
    for _ in range(warmup):
        runner.run(x)
        runner.synchronize()
    clock = _Clock(runner.device)
    samples: list[float] = []
    for _ in range(repeats):
        samples.append(clock.time(runner, x))
        if max_time_s is not None and len(samples) >= min_repeats and sum(samples) >= max_time_s:
            break
    return samples
