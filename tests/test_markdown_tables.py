"""Every Markdown table the project writes or ships parses as a table in GitHub-flavoured Markdown
(markdown-it-py's GFM table rule), not as a paragraph of pipes."""
from pathlib import Path

import pytest

from markdown_check import assert_tables_parse, table_blocks

ROOT = Path(__file__).parent.parent
SHIPPED = sorted(p for p in ROOT.rglob("*.md") if not {".venv", "runs", ".pytest_cache", "node_modules"} & set(p.parts))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_markdown_table_parses(path):
    assert_tables_parse(path.read_text())


def test_the_checker_catches_a_delimiter_row_of_the_wrong_width():
    broken = "| a | b |\n|---|---|---|\n| 1 | 2 |\n"
    assert len(table_blocks(broken)) == 1
    with pytest.raises(AssertionError, match="parsed tables"):
        assert_tables_parse(broken)
    with pytest.raises(AssertionError, match="row widths"):
        assert_tables_parse("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n")


def test_md_table_escapes_pipes_and_refuses_ragged_rows():
    from effvit_deploy.bench.markdown import md_table

    lines = md_table(["x", "y"], [["a|b", 1]])
    assert_tables_parse("\n".join(lines))
    with pytest.raises(ValueError, match="2-column"):
        md_table(["x", "y"], [[1]])
