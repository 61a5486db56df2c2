"""What the report reads off the results: scaling exponents, crossovers, Pareto fronts, picks.

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
from typing import Optional, Sequence

import numpy as np


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
