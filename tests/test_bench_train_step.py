"""effvit-bench --train-step: forward + backward + AdamW per configuration, epoch time, OOM handling."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from conftest import make_tiny_run, tiny_model
from effvit_deploy.bench import train_step as ts
from effvit_deploy.bench.results import load_results
from effvit_deploy.cli.bench import main


def test_a_step_is_forward_backward_and_adamw_under_bf16_autocast():
    model = tiny_model("nystrom")
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    runner = ts.train_runner(model, "bf16", "cpu", num_classes=10)
    x = runner.prepare(np.random.default_rng(0).standard_normal((2, 3, 64, 64), dtype=np.float32))
    loss = runner.run(x)
    assert torch.isfinite(loss) and model.training
    assert seen == [torch.bfloat16], "the forward runs under bf16 autocast"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32 (mixed precision)"
    moved = [not torch.equal(a, p) for a, p in zip(before, model.parameters())]
    assert all(moved), "every parameter received a gradient and an AdamW update"
    runner.run(x)
    fp32 = []
    model.head.register_forward_hook(lambda m, i, o: fp32.append(o.dtype))
    ts.train_runner(model, "fp32", "cpu", num_classes=10).run(x)
    assert fp32 == [torch.float32]


def test_epoch_time_is_whole_steps_times_the_median_step():
    assert ts.epoch_fields(19.0, 64, 126_689) == {"epoch_images": 126_689, "epoch_steps": 1980,
                                                  "epoch_s": pytest.approx(1980 * 0.019)}


@pytest.mark.slow
def test_cli_train_step_sweep_times_each_run_and_the_bound_and_reports_epoch_time(tmp_path, capsys):
    runs = [str(make_tiny_run(tmp_path / a, a)) for a in ("exact", "nystrom")]
    rc = main([*runs, "--train-step", "--resolutions", "32,64", "--batch-sizes", "2", "--precision", "bf16",
               "--warmup", "1", "--repeats", "2", "--epoch-images", "1001", "--out", str(tmp_path / "out"),
               "--no-progress"])
    assert rc == 0
    rows = load_results(tmp_path / "out" / "train_step.jsonl")
    assert {(r["attention"], r["resolution"]) for r in rows} == {
        (a, s) for a in ("exact", "nystrom", "attention-free") for s in (32, 64)}
    for r in rows:
        assert r["status"] == "ok" and r["mode"] == "train" and r["precision"] == "bf16", r.get("reason")
        assert r["epoch_steps"] == 501 and r["epoch_s"] == pytest.approx(501 * r["latency_median_ms"] / 1e3)
        assert r["throughput_ips"] == pytest.approx(2 / (r["latency_median_ms"] / 1e3))
        assert "AdamW" in r["implementation"] and r["env"]["torch"]
    assert (tmp_path / "out" / "train_step.csv").is_file()
    report = (tmp_path / "out" / "train_step.md").read_text()
    assert "x bound" in report and "epoch = 1,001 images" in report and "| attention-free |" in report
    assert "train_step.md" in capsys.readouterr().out


def test_an_oom_is_recorded_and_only_that_runs_larger_sizes_are_skipped(tmp_path, monkeypatch):
    runs = [make_tiny_run(tmp_path / a, a) for a in ("exact", "nystrom")]
    real = ts.train_runner

    def nystrom_runs_out_of_memory(model, precision, device, num_classes):
        runner = real(model, precision, device, num_classes)
        if type(model.blocks[0].attn).__name__.lower().startswith("nystrom"):
            def oom(xy):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            runner.run = oom
        return runner

    monkeypatch.setattr(ts, "train_runner", nystrom_runs_out_of_memory)
    path = ts.train_step_sweep(runs, [32, 64], [2], ["fp32"], tmp_path / "out", bound=False, warmup=0, repeats=1,
                               progress=False)
    status = {(r["attention"], r["resolution"]): (r["status"], r["reason"]) for r in load_results(path)}
    assert status[("nystrom", 32)][0] == "oom" and "out of memory" in status[("nystrom", 32)][1]
    assert status[("nystrom", 64)] == ("skipped", "not run: oom at 32 px")
    assert status[("exact", 32)][0] == status[("exact", 64)][0] == "ok"


def test_a_precision_training_does_not_take_or_an_empty_epoch_is_one_clear_line(tmp_path, capsys):
    run = str(make_tiny_run(tmp_path / "exact", "exact"))
    assert main([run, "--train-step", "--precision", "int8", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "valid: fp32, bf16" in err
    assert main([run, "--train-step", "--epoch-images", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--epoch-images must be a positive" in capsys.readouterr().err
    assert not (tmp_path / "o").exists(), "refused before anything is built or written"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_on_cuda_a_step_is_timed_with_events_and_its_peak_read_from_the_allocator(tmp_path):
    run = make_tiny_run(tmp_path / "performer", "performer")
    result = ts.measure_train_step({"run_dir": str(run), "bound": False, "precision": "bf16", "batch": 4,
                                    "resolution": 64, "warmup": 2, "repeats": 3, "max_time_s": None})
    assert result["status"] == "ok", result["reason"]
    assert result["device"] == "cuda" and result["mem_method"] == "torch-cuda-max-allocated"
    assert result["peak_mem_bytes"] > 0 and result["epoch_s"] > 0
