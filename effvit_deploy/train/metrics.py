"""Per-epoch metrics (metrics.jsonl), the progress display, peak memory, top-k accuracy.

The progress bar is tqdm's with loss, lr, images/s and ETA; when stdout is not a terminal
(CI, nohup, a pipe) it becomes one plain log line every `log_interval` steps, so log files stay
readable. After torchvision's references/classification/utils.py MetricLogger, kept tiny.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync: a kill loses at most the line being written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Complete lines only (a half-written last line from a killed run is dropped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak, so each run of `train_all` in one process reports its own.

    On CPU this writes 5 to /proc/self/clear_refs (Linux >= 4.0 resets VmHWM, the peak RSS);
    where that is not possible the peak stays the process lifetime's (getrusage).
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, kind): the CUDA allocator's peak on GPU, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process_peak_rss"
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process_peak_rss"


@torch.no_grad()
def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many samples have their label among the k highest logits, for each k (k capped at C)."""
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(target[:, None])
    return [int(hit[:, : min(k, maxk)].any(dim=1).sum()) for k in ks]


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of one epoch: a tqdm bar on a terminal, periodic log lines otherwise, or silent."""

    def __init__(self, total: int, desc: str, enabled: bool, log_interval: int, tty: Optional[bool] = None) -> None:
        self.total, self.desc, self.enabled, self.log_interval = total, desc, enabled, log_interval
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.start = time.perf_counter()
        self.bar = None
        if enabled and self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=False)

    def due(self, step: int) -> bool:
        """Whether `update` would show something at this step (so the caller syncs only then)."""
        if not self.enabled:
            return False
        every = min(10, self.log_interval) if self.bar is not None else self.log_interval
        return step % every == 0 or step == self.total

    def update(self, step: int, images: int, **values: float) -> None:
        """`step` steps done in this epoch, `images` images seen so far in it (all ranks)."""
        elapsed = time.perf_counter() - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        fields = {**{k: f"{v:.4g}" for k, v in values.items()}, "img/s": f"{rate:.1f}"}
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(step - self.bar.n)
            if step == self.total:
                self.bar.refresh()
        else:
            eta = elapsed / step * (self.total - step) if step else 0.0
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            print(f"{self.desc} step {step}/{self.total} {text} eta {_clock(eta)}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
