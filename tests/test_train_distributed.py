"""`torchrun --nproc_per_node 2 effvit-train ...` (gloo on CPU) trains the same model as one
process with the same global batch: DistributedSampler shards each global batch between the
ranks, DDP averages their gradients, and the metrics are summed over ranks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from effvit_deploy.data import DigitsDataset
from effvit_deploy.train import load_config, train

# Two torchrun processes and a reference run: about a minute on a shared 2-core machine.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "train" / "digits.yaml"
OVERRIDES = ["epochs=1", "model_kwargs.depth=2", "sched.warmup_epochs=0", "log_interval=1000", "threads=1"]


def test_torchrun_two_processes_match_one_process(tmp_path):
    effvit_train = shutil.which("effvit-train", path=str(Path(sys.executable).parent))
    assert effvit_train, "effvit-train is not installed next to this Python"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", effvit_train,
        "--config", str(RECIPE), "--attention", "nystrom", "--out", str(tmp_path / "ddp"), "--name", "d", *OVERRIDES,
    ]
    ddp = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    single = train(load_config(RECIPE, OVERRIDES, attention="nystrom"), tmp_path / "single")
    out, _ = ddp.communicate(timeout=600)
    assert ddp.returncode == 0, out

    run = tmp_path / "ddp" / "d-nystrom"
    ddp_summary = json.loads((run / "summary.json").read_text())
    one_summary = json.loads((single / "summary.json").read_text())
    assert ddp_summary["world_size"] == 2 and one_summary["world_size"] == 1
    ddp_metrics = json.loads((run / "metrics.jsonl").read_text())
    one_metrics = json.loads((single / "metrics.jsonl").read_text())
    assert ddp_metrics["train_images"] == one_metrics["train_images"]  # summed over ranks
    assert ddp_metrics["val_images"] == one_metrics["val_images"] == len(DigitsDataset("val", 32))  # each once
    assert ddp_metrics["step"] == one_metrics["step"]
    assert abs(ddp_metrics["train_loss"] - one_metrics["train_loss"]) < 1e-3
    assert abs(ddp_summary["top1"] - one_summary["top1"]) <= 2 / one_metrics["val_images"]
    a = load_file(str(run / "checkpoints" / "last.safetensors"))
    b = load_file(str(single / "checkpoints" / "last.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, f"weights differ by up to {worst}"
