"""effvit-bench CLI: layer-only sweep end to end, YAML matrices, clear errors for bad input."""
from __future__ import annotations

from pathlib import Path

import pytest

from effvit_deploy.bench.results import load_results
from effvit_deploy.cli.bench import main, parse_args

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_layer_only_sweep_times_each_layer_and_skips_onnx_with_reason(tmp_path, capsys):
    rc = main(["--layer-only", "--attention", "exact,nystrom", "--dim", "64", "--heads", "2",
               "--resolutions", "64,128", "--backends", "torch,onnxruntime", "--out", str(tmp_path),
               "--warmup", "1", "--repeats", "3", "--no-progress"])
    assert rc == 0
    rows = load_results(tmp_path / "results.jsonl")
    ok = [r for r in rows if r["status"] == "ok"]
    assert {(r["attention"], r["tokens"]) for r in ok} == {(a, t) for a in ("exact", "nystrom") for t in (17, 65)}
    assert all(r["mode"] == "layer" and r["backend"] == "torch" and r["gflops"] > 0 for r in ok)
    skipped = [r for r in rows if r["backend"] == "onnxruntime"]
    assert skipped and all(r["status"] == "skipped" and "PyTorch module" in r["reason"] for r in skipped)
    report = (tmp_path / "report.md").read_text()
    assert "layer_latency_vs_tokens.png" in report and (tmp_path / "layer_latency_vs_tokens.png").stat().st_size > 0
    assert "report:" in capsys.readouterr().out


def test_nothing_to_benchmark_is_a_clear_error(tmp_path, capsys):
    assert main(["--backends", "torch", "--out", str(tmp_path)]) == 2
    assert "nothing to benchmark" in capsys.readouterr().err


def test_bad_values_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["--layer-only", "--resolutions", "0,224"])
    assert "positive integers" in capsys.readouterr().err
    assert main(["--layer-only", "--attention", "flash", "--out", "/tmp/never-written"]) == 2
    assert "unknown attention" in capsys.readouterr().err


def test_committed_matrices_parse_and_flags_override_them(tmp_path):
    args = parse_args(["--config", str(REPO / "serve" / "bench_cpu_vits.yaml"), "--repeats", "2"])
    assert args.resolutions == [224, 384, 512, 768, 1024, 2048] and args.backends == "torch,onnxruntime"
    assert args.repeats == 2 and args.accuracy is False and args.model == "vit_small_patch16_224"
    assert parse_args(["--config", str(REPO / "serve" / "bench_layer_vits.yaml")]).layer_only is True
    bad = tmp_path / "bad.yaml"
    bad.write_text("resolution: [224]\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(bad)])


@pytest.mark.slow
def test_report_only_redraws_from_an_existing_results_file(tmp_path, capsys):
    committed = REPO / "benchmarks" / "results" / "cpu-amd-epyc-2026-11-25" / "results.jsonl"
    (tmp_path / "results.jsonl").write_bytes(committed.read_bytes())
    assert main(["--report-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.jsonl").read_bytes() == committed.read_bytes()  # read, never rewritten
    report = (tmp_path / "report.md").read_text()
    for png in ("latency_vs_tokens.png", "speedup_vs_tokens.png"):
        assert png in report and (tmp_path / png).stat().st_size > 1000
    measured = {r["attention"] for r in load_results(committed) if r["status"] == "ok"}
    assert measured and all(name in report for name in measured)
    assert f"report: {tmp_path / 'report.md'}" in capsys.readouterr().out


def test_report_only_without_a_results_file_is_a_clear_error(tmp_path, capsys):
    assert main(["--report-only", "--out", str(tmp_path)]) == 2
    assert "no results file" in capsys.readouterr().err


def test_a_sweep_where_nothing_could_run_exits_non_zero(tmp_path, capsys):
    rc = main(["--layer-only", "--attention", "exact", "--dim", "64", "--heads", "2", "--resolutions", "64",
               "--backends", "onnxruntime", "--out", str(tmp_path), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("effvit-bench: error: none of the 1 configurations ran") and "\n" not in err


def test_report_goals_and_thread_policy_are_user_options(tmp_path):
    args = parse_args(["--layer-only", "--speedup-target", "1024:2,2048:5", "--budgets", "30,100",
                       "--thread-policy", "passive", "--no-bound"])
    assert args.speedup_target == {1024: 2.0, 2048: 5.0} and args.budgets == [30.0, 100.0]
    assert args.thread_policy == "passive" and args.bound is False
    defaults = parse_args(["--layer-only"])
    assert defaults.speedup_target == {} and defaults.thread_policy == "default" and defaults.bound is True
    config = tmp_path / "goals.yaml"
    config.write_text("layer_only: true\nspeedup_target: {1024: 2}\nbudgets: [50]\n")
    assert parse_args(["--config", str(config)]).speedup_target == {1024: 2.0}
    for bad in (["--speedup-target", "1024"], ["--thread-policy", "busy"], ["--budgets", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["--layer-only", *bad])
