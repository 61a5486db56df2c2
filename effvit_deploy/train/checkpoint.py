"""Resumable training state, written atomically and read back with `torch.load(weights_only=True)`.

checkpoints/last_state.pt holds everything needed to continue a killed run from its last
complete epoch and reach the same weights as an uninterrupted run: the model, optimizer,
scheduler, AMP scaler and EMA states, the epoch/step counters, the best metric, every RNG
(torch, CUDA, numpy, python) and the data order (sampler seed and epoch). RNG states are stored
as tensors and plain Python values so no pickled object is ever loaded.

Each state verifies itself: it is stored as a byte payload with its SHA-256, and it carries the
resolved config and the data identity it was trained with, so `--resume` can refuse a changed
recipe or data set even when config.yaml is gone. The state it replaced is kept as
previous_state.pt; when the latest is unreadable (a disk fault, a copy cut short), resuming
falls back to the previous one, says so, and moves the bad file aside as `*.corrupt`.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..atomic import atomic_path

STATE_FILE = "last_state.pt"
PREVIOUS_FILE = "previous_state.pt"
FORMAT = "effvit-train-state/1"


def rng_state() -> dict[str, Any]:
    """Every random generator a training step draws from, as tensors and plain values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": np_kind,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(ValueError):
    """No usable training state: the message names the file, what is wrong and the fix."""


def _wrap(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    return {
        "format": FORMAT,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8),
    }


def save_state(checkpoint_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` as checkpoint_dir/last_state.pt, the one it replaces kept as previous_state.pt.

    The new state is fully written to a temporary file before the old one is renamed to
    previous and the new one into place, so a kill at any instant leaves at least one complete
    state (and at most a stale temporary file, removed when the run starts again).
    """
    checkpoint_dir = Path(checkpoint_dir)
    path = checkpoint_dir / STATE_FILE
    wrapped = _wrap(state)
    with atomic_path(path) as tmp:
        torch.save(wrapped, tmp)
        if path.is_file():
            os.replace(path, checkpoint_dir / PREVIOUS_FILE)
    return path


def read_state(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """The state in `path`, after checking its digest; CheckpointError (one line) otherwise."""
    def broken(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is unusable: {reason}")

    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise broken("it holds pickled objects, which are never loaded (not written by effvit-train)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise broken(f"truncated or corrupt ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT or not torch.is_tensor(outer.get("payload")):
        raise broken("not an effvit-train state file")
    payload = outer["payload"].numpy().tobytes()
    if hashlib.sha256(payload).hexdigest() != outer.get("sha256"):
        raise broken("its contents do not match their recorded SHA-256 (corrupted on disk)")
    return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)


@dataclass
class Resumable:
    """The newest usable state, where it came from, and the newer files that were unusable."""

    state: dict[str, Any]
    path: Path
    unusable: list[tuple[Path, str]]


def load_state(checkpoint_dir: Path, map_location: Any = "cpu") -> Optional[Resumable]:
    """The newest state that verifies (last_state.pt, else previous_state.pt), or None when the
    run never finished an epoch. Raises CheckpointError when state files exist but none is usable."""
    checkpoint_dir = Path(checkpoint_dir)
    candidates = [p for p in (checkpoint_dir / STATE_FILE, checkpoint_dir / PREVIOUS_FILE) if p.is_file()]
    unusable: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            return Resumable(read_state(path, map_location), path, unusable)
        except CheckpointError as exc:
            unusable.append((path, str(exc)))
    if unusable:
        raise CheckpointError(
            "; ".join(reason for _, reason in unusable)
            + ": no usable state is left to resume from; start the run again with --redo"
        )
    return None


def quarantine(unusable: list[tuple[Path, str]]) -> list[Path]:
    """Rename unusable state files to NAME.corrupt, kept for inspection but never rotated into
    previous_state.pt or read again."""
    moved = []
    for path, _ in unusable:
        if path.is_file():
            target = path.with_name(path.name + ".corrupt")
            os.replace(path, target)
            moved.append(target)
    return moved
