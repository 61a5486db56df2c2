"""The report as a document: sections of blocks (a paragraph, a table, an image), rendered once
as GitHub-flavoured Markdown (tables by `markdown.md_table`) and once as one self-contained HTML
page (the PNG plots embedded).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

from .markdown import md_table

STYLESHEET = (
    "body{font:15px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;color:#222;max-width:1200px;margin:2em auto;"
    "padding:0 1em}h1,h2{line-height:1.2}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}"
    ".scroll{overflow-x:auto}table{border-collapse:collapse;font-size:13px;margin:.5em 0 1.5em}"
    "th,td{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f6f8fa}"
    "tr:nth-child(even) td{background:#fafbfc}figure{margin:1em 0}img{max-width:100%;height:auto}"
    "figcaption{color:#555;font-size:13px}"
)
Block = tuple  # ("p", text) | ("table", header, rows) | ("img", file name in the report folder, caption)
Section = tuple  # (heading, list of Blocks)


def render_markdown(sections: list[Section], title: str) -> str:
    """The document as Markdown; images are linked by file name (the PNGs sit beside it)."""
    out = [f"# {title}", ""]
    for heading, blocks in sections:
        out += [f"## {heading}", ""]
        for b in blocks:
            if b[0] == "p":
                out += [b[1], ""]
            elif b[0] == "img":
                out += [f"![{b[2]}]({b[1]})", ""]
            else:
                out += md_table(b[1], b[2]) + [""]
    return "\n".join(out)


def render_html(sections: list[Section], title: str, out_dir: Path) -> str:
    """The document as one HTML page, every text escaped and each image read from `out_dir` and embedded."""
    e = html.escape
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
           f"content='width=device-width, initial-scale=1'><title>{e(title)}</title><style>{STYLESHEET}</style>"
           f"</head><body>", f"<h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for b in blocks:
            if b[0] == "p":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "img":
                data = base64.b64encode((out_dir / b[1]).read_bytes()).decode()
                out.append(f"<figure><img alt='{e(b[2])}' src='data:image/png;base64,{data}'><figcaption>{e(b[2])}</figcaption></figure>")
            else:
                out.append("<div class='scroll'><table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</table></div>")
    out.append("</body></html>")
    return "\n".join(out)
