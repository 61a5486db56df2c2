"""A run killed with SIGKILL mid-epoch and continued with --resume ends with exactly the weights
of an uninterrupted run (deterministic CPU): model, optimizer, schedule, EMA, every RNG and the
data order all come back from checkpoints/last_state.pt."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from effvit_deploy.train.checkpoint import CheckpointError, load_state, read_state

ROOT = Path(__file__).resolve().parents[1]
# Random augmentation (timm's train transform), mixup (numpy RNG), EMA and Performer redraws:
# each one breaks equality when its state is not restored exactly.
ARGS = [
    "--config", str(ROOT / "train" / "digits.yaml"), "--attention", "performer", "--name", "k",
    "epochs=2", "model_kwargs.depth=2", "sched.warmup_epochs=1", "log_interval=1", "threads=1",
    "attention_kwargs.performer.redraw_interval=20", "ema.enabled=true", "ema.decay=0.9",
    "aug={mixup: 0.2, scale: [0.6, 1.0]}",
]


def _effvit_train(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-u", "-m", "effvit_deploy.cli.train", *ARGS, "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    reference = _effvit_train(tmp_path / "ref")
    victim = _effvit_train(tmp_path / "killed")
    seen = []
    for line in victim.stdout:
        seen.append(line)
        step = re.match(r"\[performer\] epoch 2/2 step (\d+)/", line)
        if step and int(step.group(1)) >= 3:  # epoch 1 is checkpointed and epoch 2 is under way
            os.kill(victim.pid, signal.SIGKILL)
            break
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, "".join(seen[-20:])
    run = tmp_path / "killed" / "k-performer"
    assert load_state(run / "checkpoints").state["epoch"] == 0 and not (run / "summary.json").exists()

    resumed = _effvit_train(tmp_path / "killed", "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resuming" in out and "after epoch 1" in out
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out

    ref_run = tmp_path / "ref" / "k-performer"
    ref_state, state = load_state(ref_run / "checkpoints").state, load_state(run / "checkpoints").state
    assert state["trainer"]["step"] == ref_state["trainer"]["step"]
    for key, value in ref_state["trainer"]["model"].items():
        assert torch.equal(value, state["trainer"]["model"][key]), key
    for which in ("last", "best"):  # the EMA weights that later stages deploy
        ref = load_file(str(ref_run / "checkpoints" / f"{which}.safetensors"))
        got = load_file(str(run / "checkpoints" / f"{which}.safetensors"))
        assert all(torch.equal(ref[k], got[k]) for k in ref), which
    ref_lines = (ref_run / "metrics.jsonl").read_text().splitlines()
    got_lines = (run / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: re.sub(r'"(train_s|eval_s|images_per_s|peak_mem_bytes)": [0-9.e+-]+', "", line)
    assert [strip(x) for x in got_lines] == [strip(x) for x in ref_lines]


# Runs `effvit-train` with torch.save patched so that the third state file written is cut off half
# way and the process SIGKILLs itself mid-write (no hook in the library: the kill is real).
KILL_DURING_THIRD_STATE_WRITE = """
import io, os, signal, sys
import torch
real_save, writes = torch.save, []
def save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)):
        writes.append(f)
        if len(writes) == 3:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            with open(f, "wb") as out:
                out.write(buffer.getvalue()[: buffer.tell() // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)
torch.save = save
from effvit_deploy.cli.train import main
sys.exit(main(sys.argv[1:]))
"""
SMALL = [
    "--config", str(ROOT / "train" / "digits.yaml"), "--attention", "exact", "--name", "f", "epochs=3",
    "model_kwargs.depth=2", "data={name: synthetic, train_size: 128, val_size: 32}", "log_interval=1", "threads=1",
    "aug={scale: [0.6, 1.0]}",
]


def _train_small(out: Path, *extra: str, script: str = "") -> subprocess.Popen:
    head = ["-c", script] if script else ["-m", "effvit_deploy.cli.train"]
    cmd = [sys.executable, "-u", *head, *SMALL, "--out", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_kill_during_a_state_write_then_a_corrupt_latest_falls_back_to_identical_weights(tmp_path):
    reference = _train_small(tmp_path / "ref")
    victim = _train_small(tmp_path / "killed", script=KILL_DURING_THIRD_STATE_WRITE)
    out, _ = victim.communicate(timeout=600)
    assert victim.returncode == -signal.SIGKILL, out
    ckpt = tmp_path / "killed" / "f-exact" / "checkpoints"
    stale = list(ckpt.glob(".last_state.pt.*.tmp"))
    assert len(stale) == 1, sorted(p.name for p in ckpt.iterdir())  # the half-written third state
    assert load_state(ckpt).state["epoch"] == 1 and read_state(ckpt / "previous_state.pt")["epoch"] == 0

    latest = ckpt / "last_state.pt"  # then the latest complete state is damaged on disk
    data = bytearray(latest.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    latest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="last_state.pt is unusable"):
        read_state(latest)

    resumed = _train_small(tmp_path / "killed", "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "last_state.pt is unusable" in out and "falling back to previous_state.pt" in out
    assert "resuming" in out and "after epoch 1" in out
    assert not any(p.exists() for p in stale) and (ckpt / "last_state.pt.corrupt").is_file()
    ref_out, _ = reference.communicate(timeout=600)
    assert reference.returncode == 0, ref_out
    ref_ckpt = tmp_path / "ref" / "f-exact" / "checkpoints"
    for which in ("last", "best"):
        ref = load_file(str(ref_ckpt / f"{which}.safetensors"))
        got = load_file(str(ckpt / f"{which}.safetensors"))
        assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref), which
    ref_state, state = load_state(ref_ckpt).state, load_state(ckpt).state
    assert state["epoch"] == ref_state["epoch"] == 2
    assert all(torch.equal(v, state["trainer"]["model"][k]) for k, v in ref_state["trainer"]["model"].items())


@pytest.mark.slow
def test_resume_refuses_a_changed_config_from_the_checkpoint_alone(tmp_path):
    first = _train_small(tmp_path, "epochs=1")
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    run = tmp_path / "f-exact"
    (run / "summary.json").unlink()  # as if killed before the end
    (run / "config.yaml").unlink()
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    changed = _train_small(tmp_path, "--resume", "epochs=2", "optim.lr=0.01", "seed=3")
    out, _ = changed.communicate(timeout=600)
    assert changed.returncode == 2, out
    line = out.strip().splitlines()[-1]
    assert "cannot resume from" in line and "optim.lr 0.001 -> 0.01" in line and "seed 0 -> 3" in line, out
    assert "Traceback" not in out
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # nothing rewritten, nothing added
