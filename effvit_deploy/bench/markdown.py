"""Markdown tables that render as tables in GitHub-flavoured Markdown (and in markdown-it-py).

A GFM table needs a header row, a delimiter row with exactly as many cells, and body rows whose
literal pipes are escaped; a mismatch turns the whole block into a paragraph of pipes.
"""
from __future__ import annotations

from typing import Any, Sequence


def md_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The table's lines. Raises ValueError when a row's cell count differs from the header's."""
    bad = [len(r) for r in rows if len(r) != len(header)]
    if bad:
        raise ValueError(f"every row of a {len(header)}-column table needs {len(header)} cells, got rows of {bad}")

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *map(line, rows)]
