"""Benchmark statistics and analysis on known inputs: latency stats, timing loop, memory probe,
power-law fit, crossover, Pareto front, recommendation pick."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from effvit_deploy.backends import Runner
from effvit_deploy.bench.analysis import crossover, fit_power_law, pareto_front, pick, tokens_to_resolution
from effvit_deploy.bench.harness import latency_stats, time_runner
from effvit_deploy.bench.memory import CpuRssPeak, memory_probe


def test_latency_stats_on_known_samples():
    samples = [ms / 1e3 for ms in range(1, 101)]  # 1..100 ms, shuffled order must not matter
    stats = latency_stats(samples[::-1], batch=8)
    assert stats["latency_median_ms"] == pytest.approx(50.5)
    assert stats["latency_p90_ms"] == pytest.approx(90.1)
    assert stats["latency_p99_ms"] == pytest.approx(99.01)
    assert stats["latency_min_ms"] == pytest.approx(1.0) and stats["latency_max_ms"] == pytest.approx(100.0)
    assert stats["throughput_ips"] == pytest.approx(8 / 0.0505)
    assert stats["repeats_done"] == 100
    with pytest.raises(ValueError, match="no timing samples"):
        latency_stats([], batch=1)


def _sleeping_runner(seconds: float, calls: list) -> Runner:
    def run(x):
        calls.append(x)
        time.sleep(seconds)
        return x

    return Runner("fake", "fp32", "cpu", None, prepare=lambda b: b * 2, run=run,
                  to_numpy=np.asarray, synchronize=lambda: None)


def test_time_runner_warms_up_untimed_then_times_each_repeat():
    calls: list = []
    samples = time_runner(_sleeping_runner(0.002, calls), np.ones(3), warmup=2, repeats=5)
    assert len(calls) == 7 and len(samples) == 5
    assert all(s >= 0.002 for s in samples)
    assert np.array_equal(calls[0], np.full(3, 2.0)), "input must be prepared once, outside the clock"


def test_time_runner_stops_at_time_budget_after_minimum_repeats():
    calls: list = []
    samples = time_runner(_sleeping_runner(0.02, calls), np.ones(1), warmup=0, repeats=50, max_time_s=0.01, min_repeats=3)
    assert len(samples) == 3


def test_cpu_peak_memory_sees_an_allocation_made_during_the_run():
    probe = memory_probe("torch", "cpu")
    assert isinstance(probe, CpuRssPeak)
    probe.before_load()
    probe.before_run()
    block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
    peak = probe.after_run()
    del block
    assert peak >= 190 * 2**20


def test_power_law_fit_recovers_the_exponent_on_the_long_sequence_end():
    tokens = np.array([197, 577, 1025, 2305, 4097, 16385], dtype=float)
    latency = 3e-6 * tokens**1.7
    latency[:2] += 50.0  # a constant overhead dominates short sequences; the top-3 fit ignores it
    slope, coef = fit_power_law(tokens, latency, top=3)
    assert slope == pytest.approx(1.7, abs=1e-2)
    assert coef == pytest.approx(3e-6, rel=0.05)
    assert fit_power_law(tokens, 5 * tokens**2.0, top=6)[0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="at least 2"):
        fit_power_law([10], [1])


def test_crossover_interpolates_where_the_variant_overtakes_exact():
    tokens = [10, 50, 200, 1000]
    exact = [t**2 for t in tokens]
    variant = [100 * t for t in tokens]  # equal at t = 100
    kind, at = crossover(tokens, exact, variant)
    assert kind == "at" and at == pytest.approx(100, rel=1e-6)
    assert crossover(tokens, exact, [0.1 * t for t in tokens])[0] == "below"
    assert crossover(tokens, exact, [10 * t**2 for t in tokens]) == ("never", None)
    assert tokens_to_resolution(1 + 64**2, 16) == pytest.approx(1024)


def test_pareto_front_and_pick():
    latency = [10, 20, 15, 40, 30]
    accuracy = [0.70, 0.80, 0.65, 0.85, 0.80]
    assert pareto_front(latency, accuracy) == [0, 1, 3]
    rows = [{"attention": a, "latency_median_ms": l, "top1": t} for a, l, t in zip("abcde", latency, accuracy)]
    assert pick(rows, 25)["attention"] == "b"
    assert pick(rows, 5) is None
    no_acc = [{**r, "top1": None} for r in rows]
    assert pick(no_acc, 25)["attention"] == "a"
    assert math.isclose(pick(rows, 1000)["top1"], 0.85)


def test_report_keeps_the_latest_measurement_of_a_rerun_configuration():
    from effvit_deploy.bench.analysis import latest_rows

    base = {"mode": "model", "run": "r", "backend": "torch", "precision": "fp32", "batch": 1, "env": {"cpu_model": "x"}}
    rows = [{**base, "resolution": 224, "latency_median_ms": 5.0}, {**base, "resolution": 384, "latency_median_ms": 9.0},
            {**base, "resolution": 224, "latency_median_ms": 4.0}]
    kept, superseded = latest_rows(rows)
    assert superseded == 1
    assert sorted((r["resolution"], r["latency_median_ms"]) for r in kept) == [(224, 4.0), (384, 9.0)]


def test_tables_and_plots_list_mechanisms_by_their_class_display_rank(monkeypatch):
    from effvit_deploy.attention import ATTENTIONS
    from effvit_deploy.bench.analysis import display_order
    from effvit_deploy.bench.bound import BOUND
    from effvit_deploy.bench.plots import colour

    names = [BOUND, "atrous", "my-own", "exact", "nystrom", "linformer", "performer"]
    assert display_order(names) == ["exact", "linformer", "performer", "nystrom", "atrous", BOUND, "my-own"]
    assert [colour(a) for a in display_order(ATTENTIONS)] == ["C0", "C1", "C2", "C3", "C4"] and colour(BOUND) == "k"
    monkeypatch.setattr(ATTENTIONS["atrous"], "display_rank", -1)  # the class decides, nothing else
    assert display_order(names)[:2] == ["atrous", "exact"] and colour("atrous") == "C0"
