"""What the report reads off the results: scaling exponents, crossovers, Pareto fronts, picks,
and which rows it reads (the latest of each configuration, grouped into series, in display order).

- Scaling exponent: least-squares slope of log(latency or memory) against log(tokens) over the
  long-sequence end (the `top` largest token counts), where the N^2 term dominates exact
  attention and linear mechanisms approach slope 1 (cf. Tay et al. 2020, "Efficient
  Transformers: A Survey", and the Linformer/Performer/Nystromformer scaling plots).
- Crossover: the token count at which a variant's latency falls below exact attention's,
  interpolated linearly in log-log between the two measured sizes that bracket it.
- Pareto front: configurations no other one beats on both latency (lower) and accuracy (higher).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable, Optional, Sequence

import numpy as np

EXACT = "exact"
FIT_POINTS = 3  # the largest token counts a scaling exponent is fitted on


def fit_power_law(x: Sequence[float], y: Sequence[float], top: int = 3) -> tuple[float, float]:
    """(exponent b, coefficient a) of y = a * x^b, fitted on the `top` largest x."""
    pairs = sorted((float(a), float(b)) for a, b in zip(x, y) if a > 0 and b > 0)[-top:]
    if len(pairs) < 2:
        raise ValueError(f"a power-law fit needs at least 2 positive points, got {len(pairs)}")
    lx, ly = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(slope), float(math.exp(intercept))


def crossover(tokens: Sequence[float], reference: Sequence[float], candidate: Sequence[float]) -> tuple[str, Optional[float]]:
    """Where `candidate` (a variant's latency) overtakes `reference` (exact) along `tokens`.

    Returns ("below", first tokens) if it is already faster at the smallest size and stays so,
    ("at", interpolated tokens) for a crossing within range after which it stays faster,
    ("never", None) if it is not faster at the largest size.
    """
    pts = sorted(zip(tokens, reference, candidate))
    if not pts:
        return "never", None
    faster = [c < r for _, r, c in pts]
    if not faster[-1]:
        return "never", None
    first = len(faster) - 1
    while first > 0 and faster[first - 1]:
        first -= 1
    if first == 0:
        return "below", float(pts[0][0])
    (t0, r0, c0), (t1, r1, c1) = pts[first - 1], pts[first]
    g0, g1 = math.log(c0 / r0), math.log(c1 / r1)
    frac = g0 / (g0 - g1) if g0 != g1 else 1.0
    return "at", float(math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0))))


def tokens_to_resolution(tokens: float, patch: int, prefix: int = 1) -> float:
    """Side of the square image with `tokens` tokens (inverse of 1 + (res / patch)^2)."""
    return math.sqrt(max(tokens - prefix, 0.0)) * patch


def pareto_front(latency: Sequence[float], accuracy: Sequence[float]) -> list[int]:
    """Indices of points not dominated (another point at most as slow and at least as accurate,
    strictly better in one), ordered by latency."""
    idx = sorted(range(len(latency)), key=lambda i: (latency[i], -accuracy[i]))
    front, best = [], -math.inf
    for i in idx:
        if accuracy[i] > best:
            front.append(i)
            best = accuracy[i]
    return front


def pick(candidates: Sequence[dict], budget_ms: float) -> Optional[dict]:
    """The most accurate candidate (rows with latency_median_ms, top1) within the latency
    budget; the fastest breaks ties, and ranks alone when no accuracy is known."""
    fits = [c for c in candidates if c["latency_median_ms"] <= budget_ms]
    if not fits:
        return None
    return min(fits, key=lambda c: (-(c.get("top1") if c.get("top1") is not None else -1.0), c["latency_median_ms"]))


def display_rank(attention: str) -> int:
    """Where `attention` goes in every table and plot: its class's `display_rank` (the
    attention-free reference after every mechanism); unknown names last."""
    from ..attention import REGISTRY, TimmAttention

    return REGISTRY.get(attention, TimmAttention).display_rank


def display_order(attentions: Iterable[str]) -> list[str]:
    """`attentions` by `display_rank`, then by name."""
    return sorted(attentions, key=lambda a: (display_rank(a), a))


def latest_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """The last row of each configuration on each machine (the file is append-only: a re-run
    supersedes an earlier measurement), and how many rows were superseded."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        key = (r["mode"], r["run"], r["backend"], r["precision"], r.get("batch"), r.get("resolution"),
               (r.get("env") or {}).get("cpu_model"), (r.get("env") or {}).get("gpu"))
        latest.pop(key, None)
        latest[key] = r
    return list(latest.values()), len(rows) - len(latest)


def series(rows: list[dict], mode: str) -> dict[tuple, dict[str, list[dict]]]:
    """{(backend, precision, batch): {attention: ok rows sorted by tokens}} for one mode."""
    out: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["mode"] == mode and r["status"] == "ok":
            out[(r["backend"], r["precision"], r["batch"])][r["attention"]].append(r)
    for by_att in out.values():
        for att in by_att:
            by_att[att].sort(key=lambda r: r["tokens"])
    return out


def fit_exponent(points: list[dict], field: str) -> Optional[float]:
    """The scaling exponent of `field` against tokens over the FIT_POINTS largest token counts;
    None with fewer than two measured points."""
    xs = [p["tokens"] for p in points if p.get(field)]
    ys = [p[field] for p in points if p.get(field)]
    try:
        return fit_power_law(xs, ys, FIT_POINTS)[0]
    except ValueError:
        return None


def measured_here(row: dict) -> bool:
    """True when the row's top-1 was measured for its own configuration at its own resolution."""
    return row.get("top1") is not None and row.get("top1_images") is not None and row.get("top1_resolution") == row.get("resolution")


def with_accuracy(row: dict, accuracy: dict[tuple[str, int], dict[str, Any]]) -> dict:
    """The row with top-1 from `accuracy` when it is a PyTorch fp32 model row of a run and
    resolution listed there and has no top-1 measured at its own resolution."""
    acc = accuracy.get((row.get("run"), row.get("resolution")))
    if (acc is None or measured_here(row) or row["mode"] != "model" or row["backend"] != "torch"
            or row["precision"] != "fp32"):
        return row
    return {**row, "top1": acc["top1"], "top1_images": acc["images"], "top1_ci95": acc.get("ci95"),
            "top1_resolution": row["resolution"], "top1_source": "evaluation stage (PyTorch fp32, same weights)"}


def tradeoff_points(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Per batch size: every measured configuration (run, backend, precision, resolution) whose
    top-1 was measured at that same configuration."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        if r["mode"] == "model" and r["status"] == "ok" and measured_here(r):
            out[("all backends", "all precisions", r["batch"])].append(r)
    return out
