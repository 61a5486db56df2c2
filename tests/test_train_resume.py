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

import torch
from safetensors.torch import load_file

from effvit_deploy.train.checkpoint import load_state

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
