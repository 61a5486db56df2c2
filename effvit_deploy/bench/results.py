"""The results file: one row per configuration, appended to JSONL and CSV with the environment.

Every row carries the machine and software it was measured on (CPU model and cores, GPU and
driver when present, library versions, git commit; no hostname), so files from different
machines can be concatenated and compared. Both files are rewritten atomically on each append
(effvit_deploy.atomic): a killed sweep leaves every finished row readable.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Iterable, Union

from ..atomic import write_text

RESULTS_JSONL = "results.jsonl"


def load_results(path: Union[str, Path]) -> list[dict[str, Any]]:
    """Rows of a results JSONL file (the CSV is its flat twin)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}: run `effvit-bench` first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {k: v for k, v in row.items() if k != "env"}
    flat.update({f"env_{k}": v for k, v in row.get("env", {}).items()})
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in flat.items()}


def write_csv(rows: Iterable[dict[str, Any]], path: Union[str, Path]) -> None:
    flat = [_flat(r) for r in rows]
    columns: list[str] = []
    for r in flat:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(flat)
    write_text(path, buf.getvalue())


def append_results(out_dir: Union[str, Path], new_rows: Iterable[dict[str, Any]], stem: str = "results") -> Path:
    """Append rows to out_dir/STEM.jsonl and regenerate STEM.csv; returns the JSONL path
    (stem "results": the inference sweep; "train_step": the training-step sweep)."""
    out_dir = Path(out_dir)
    path = out_dir / f"{stem}.jsonl"
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    text = old + "".join(json.dumps(r, sort_keys=False) + "\n" for r in new_rows)
    write_text(path, text)
    write_csv(load_results(path), out_dir / f"{stem}.csv")
    return path
