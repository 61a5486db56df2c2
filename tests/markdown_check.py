"""Test helper: the Markdown tables a text holds parse as tables in GitHub-flavoured Markdown.

markdown-it-py (installed with gradio) with its GFM table rule: a block of pipe lines whose
header and delimiter rows disagree renders as a paragraph, and this check then fails.
"""
from __future__ import annotations

from typing import Optional


def table_blocks(text: str) -> list[list[str]]:
    """Consecutive lines starting with '|', outside fenced code."""
    blocks, current, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if not fenced and line.lstrip().startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    return blocks + ([current] if current else [])


def assert_tables_parse(text: str, expected: Optional[int] = None) -> None:
    """Every pipe block is one table with all its lines as rows, each row as wide as the header."""
    from markdown_it import MarkdownIt

    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    tables = [i for i, t in enumerate(tokens) if t.type == "table_open"]
    blocks = table_blocks(text)
    assert len(tables) == len(blocks), f"{len(blocks)} pipe blocks but {len(tables)} parsed tables"
    if expected is not None:
        assert len(tables) == expected, f"expected {expected} tables, found {len(tables)}"
    for start, block in zip(tables, blocks):
        rows, widths, cells = 0, [], 0
        for t in tokens[start:]:
            if t.type == "table_close":
                break
            if t.type == "tr_open":
                rows, cells = rows + 1, 0
            elif t.type in ("th_open", "td_open"):
                cells += 1
            elif t.type == "tr_close":
                widths.append(cells)
        assert rows == len(block) - 1, f"table starting {block[0][:60]!r}: {rows} rows parsed of {len(block) - 1}"
        raw = [line.strip().removeprefix("|").removesuffix("|").replace("\\|", "").count("|") + 1 for line in block]
        assert set(widths) == {raw[0]} and set(raw) == {raw[0]}, \
            f"table starting {block[0][:60]!r}: row widths {sorted(set(raw))} vs header {raw[0]} (GFM drops extra cells)"
