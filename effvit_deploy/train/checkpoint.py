"""Resumable training state, written atomically and read back with `torch.load(weights_only=True)`.

checkpoints/last_state.pt holds everything needed to continue a killed run from its last
complete epoch and reach the same weights as an uninterrupted run: the model, optimizer,
scheduler, AMP scaler and EMA states, the epoch/step counters, the best metric, every RNG
(torch, CUDA, numpy, python) and the data order (sampler seed and epoch). RNG states are stored
as tensors and plain Python values so no pickled object is ever loaded.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..atomic import atomic_path

STATE_FILE = "last_state.pt"


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


def save_state(checkpoint_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` to checkpoint_dir/last_state.pt atomically (a kill leaves the previous one)."""
    path = Path(checkpoint_dir) / STATE_FILE
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return path


def load_state(checkpoint_dir: Path, map_location: Any = "cpu") -> Optional[dict[str, Any]]:
    """The last complete epoch's state, or None when the run never finished an epoch."""
    path = Path(checkpoint_dir) / STATE_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location=map_location, weights_only=True)
