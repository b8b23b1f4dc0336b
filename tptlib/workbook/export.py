"""HTML reports that need no network: the math is rendered at export time, nothing is loaded from a CDN.

nbconvert's HTML page loads MathJax (and require.js, mermaid) from cdnjs, so a report opened offline
shows every equation as raw `$$...$$`. Here every `$...$` and `$$...$$` of the Markdown cells and of
the Markdown outputs is converted to MathML with `latex2mathml` before the page is written (browsers
render MathML natively), and the page's script tags that would reach the network are left out.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

#: the lab template without its network scripts (MathJax, require.js, mermaid)
_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""

# code spans and fenced blocks are left alone; then $$display$$, then $inline$ (not "\$", not "$ ")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\s)([^$\n]+?)(?<!\s)\$(?!\$)")


def _mathml(latex: str, display: bool) -> str:
    from latex2mathml.converter import convert
    try:
        markup = convert(latex.strip(), display="block" if display else "inline")
    except Exception as exc:                               # noqa: BLE001 (any parse error is reported the same way)
        raise ValueError(f"cannot render the math {latex.strip()[:80]!r} as MathML: {exc}") from exc
    # one line, and no character Markdown would read as emphasis or an escape
    markup = markup.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "")    # HTML5 needs no namespace
    markup = markup.replace("\n", " ").replace("_", "&#95;").replace("*", "&#42;").replace("\\", "&#92;")
    return f'<div class="math-display">{markup}</div>' if display else markup


def render_math(markdown: str) -> str:
    """Markdown with every `$$...$$` and `$...$` replaced by MathML (code spans and blocks untouched)."""
    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):                       # the even parts are outside code
        text = _DISPLAY.sub(lambda m: "\n\n" + _mathml(m.group(1), True) + "\n\n", parts[i])
        parts[i] = _INLINE.sub(lambda m: _mathml(m.group(1), False), text)
    return "".join(parts)


def render_notebook_math(nb):
    """The notebook with the math of its Markdown cells and Markdown outputs rendered as MathML (in place)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render_math(cell.source)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "text/markdown" in data:
                text = data["text/markdown"]
                data["text/markdown"] = render_math("".join(text) if isinstance(text, list) else text)
    return nb


def export_html(notebook: str | Path, target: str | Path, no_input: bool = False) -> Path:
    """Write `notebook` as a self-contained HTML page to `target` (atomically): math as MathML, no CDN."""
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter
    exporter = HTMLExporter(extra_loaders=[jinja2.DictLoader({"tptlib_offline.html.j2": _TEMPLATE})],
                            template_file="tptlib_offline.html.j2")
    exporter.exclude_input = no_input
    exporter.exclude_input_prompt = no_input
    exporter.exclude_output_prompt = no_input
    nb = render_notebook_math(nbformat.read(str(notebook), as_version=4))
    body, _ = exporter.from_notebook_node(nb)
    target = Path(target)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, target)
    return target
