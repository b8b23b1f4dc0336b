"""The reports index: `index.html` with every executed report's title, purpose, finding and headline table."""
from __future__ import annotations

import os
from pathlib import Path

from .export import render_math

#: Cell tags the index reads from an executed notebook: the run it describes (first report that
#: has one), each report's one-line finding, and its headline table.
INDEX_TAGS = {"run": "index:run", "finding": "index:finding", "headline": "index:headline"}


def _cell_outputs_html(cell) -> str:
    """A code cell's outputs as HTML: tables as they render, Markdown rendered, text as <pre>."""
    import html

    from nbconvert.filters.markdown import markdown2html
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(f"<pre>{html.escape(''.join(out.get('text', '')).rstrip())}</pre>")
            continue
        data = out.get("data", {})
        if "text/html" in data:
            parts.append("".join(data["text/html"]))
        elif "text/markdown" in data:
            parts.append(markdown2html(render_math("".join(data["text/markdown"]))))
        elif "text/plain" in data:
            parts.append(f"<pre>{html.escape(''.join(data['text/plain']))}</pre>")
    return "\n".join(parts)


def index_entry(report: str | Path) -> dict:
    """What the index shows of one executed notebook: title, purpose, run, finding and headline (HTML)."""
    import html

    import nbformat
    from nbconvert.filters.markdown import markdown2html
    report = Path(report)
    nb = nbformat.read(str(report), as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), report.stem)
    lines = first.strip().splitlines()
    title = lines[0].lstrip("# ").strip() if lines else report.stem
    purpose = "\n".join(lines[1:]).strip().split("\n\n")[0]
    entry = {"stem": report.stem, "title": html.escape(title), "purpose": markdown2html(render_math(purpose)) if purpose else ""}
    for key, tag in INDEX_TAGS.items():
        cells = [c for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]
        entry[key] = "\n".join(_cell_outputs_html(c) for c in cells)
    return entry


_INDEX_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.links a { margin-right: 1em; } .finding { background: #f4f8fb; border-left: 4px solid #4a90c2; padding: .4em .8em; }
table { border-collapse: collapse; font-size: 90%; margin: .6em 0; } th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
pre { white-space: pre-wrap; }
"""


def write_index(out_dir: str | Path) -> Path:
    """Write `out_dir/index.html`: every executed report `NN_*.ipynb` in `out_dir`, each with its title,
    purpose, one-line finding and headline table, and links to the report with and without code.

    The finding and the table are the outputs of the cells tagged `index:finding` and
    `index:headline`, so every number on the page was computed by the report it comes from.
    """
    import html
    out_dir = Path(out_dir)
    reports = sorted(out_dir.glob("[0-9][0-9]_*.ipynb"))
    entries = [index_entry(r) for r in reports]
    run = next((e["run"] for e in entries if e["run"]), "")
    body = ["<h1>TPT workbook: the reports</h1>",
            "<p>Each report is an executed notebook of the workbook; start with the findings below and open a "
            "report for the figures, the intervals and the reasoning behind each number.</p>"]
    if run:
        body.append(f"<h3>This run</h3>{run}")
    for e in entries:
        links = " ".join(f'<a href="{html.escape(name)}">{label}</a>' for name, label in
                         [(f"{e['stem']}.report.html", "report"), (f"{e['stem']}.html", "report with code"),
                          (f"{e['stem']}.ipynb", "notebook")] if (out_dir / name).exists())
        body += [f"<h2>{e['title']}</h2>", e["purpose"], f'<p class="links">{links}</p>']
        if e["finding"]:
            body.append(f'<div class="finding">{e["finding"]}</div>')
        body.append(e["headline"])
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>TPT workbook reports</title>"
            f"<style>{_INDEX_STYLE}</style></head><body>\n" + "\n".join(b for b in body if b) + "\n</body></html>\n")
    target = out_dir / "index.html"
    tmp = target.with_name(".index.html.partial")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


