"""Is this output still current? One check for every output that is reused instead of rebuilt.

A stamp is a JSON object recorded with an output when it is made: what the output was made
from (weights hash, options, toolchain). Before rebuilding, a stage compares the recorded stamp
with the one the output would get now; equal (or covering it, for an output that may serve more
than was asked) means reuse. Export records each artifact's stamp in its manifest entry
(`source`); the benchmark's cached shape runs and attention-free bounds keep it in a file
beside the output.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .atomic import write_json

Stamp = Mapping[str, Any]


def read_stamp(path: Union[str, Path]) -> Optional[dict[str, Any]]:
    """The JSON object stored at `path`; None when the file is missing, unreadable or not an object
    (an output whose stamp cannot be read is rebuilt, never trusted)."""
    try:
        stamp = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(path: Union[str, Path], stamp: Stamp) -> None:
    """Record `stamp` at `path` atomically: write it after the output it describes is complete."""
    write_json(path, dict(stamp))


def is_current(
    recorded: Union[str, Path, Stamp, None],
    wanted: Stamp,
    *,
    covers: Optional[Callable[[dict[str, Any], Stamp], bool]] = None,
    outputs: Sequence[Union[str, Path]] = (),
) -> bool:
    """True when the output may be reused: its recorded stamp (a mapping, or the path of its JSON
    file) equals `wanted`, or `covers(recorded, wanted)` holds when given, and every path in
    `outputs` exists."""
    stamp = read_stamp(recorded) if isinstance(recorded, (str, Path)) else recorded
    if not isinstance(stamp, Mapping) or not all(Path(p).exists() for p in outputs):
        return False
    return covers(dict(stamp), wanted) if covers is not None else dict(stamp) == dict(wanted)
