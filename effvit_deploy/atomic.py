"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.

A crash or a kill never leaves a half-written checkpoint, engine or results file behind: a
reader sees either the old complete file or the new complete file. A kill -9 does leave the
hidden temporary file (`.NAME.PID.XXXX.tmp`); `remove_stale_temps` deletes those whose writing
process is gone, and every stage calls it on its output folders when it starts.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

PathLike = Union[str, Path]
TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it is renamed to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes(target: PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(directory: PathLike) -> list[Path]:
    """Delete the temporary files `atomic_path` left in `directory` when its process was killed
    (a live writer's files are kept); returns what was removed."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.glob(f".*{TEMP_SUFFIX}"):
        parts = path.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)
        pid = parts[1] if len(parts) == 3 else ""
        if path.is_file() and not (pid.isdigit() and _writer_alive(int(pid))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
