"""The report as one self-contained HTML file: plotly.js inlined once, every figure a
JSON spec drawn by it, every piece of text escaped, a table of contents, and the
cross-layer summary figure at the top."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from interlayer.plot_text import plot_text

from .base import SectionResult

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav ol{columns:2} .failed{background:#fde8e8;border-left:4px solid #c0392b;padding:.6em 1em;white-space:pre-wrap}
.meta{color:#666;font-size:.9em} table{border-collapse:collapse;font-size:.85em;margin:1em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} .figure{margin:1em 0;min-height:420px}
"""
MAX_TABLE_ROWS = 40


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` into it with the inlined plotly.js.
    ``</`` in the JSON is written ``<\\/`` so no string in a figure can close the script."""
    spec = pio.to_json(fig, validate=False).replace("</", "<\\/")
    return (f'<div class="figure" id="{div_id}"></div>\n<script>(function(){{var f={spec};'
            f'Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')


def table_html(frame: Any) -> str:
    shown = frame.head(MAX_TABLE_ROWS)
    more = f'<p class="meta">{len(frame) - MAX_TABLE_ROWS} more rows in the CSV.</p>' if len(frame) > MAX_TABLE_ROWS else ""
    return shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", border=0) + more


def summary_figure(results: dict[str, SectionResult]) -> go.Figure | None:
    """One line per analysis over relative depth (0 = first block, 1 = last)."""
    fig = go.Figure()
    for result in results.values():
        if result.status != "ok":
            continue
        for label, (x, y) in result.curves.items():
            fig.add_trace(go.Scatter(x=list(x), y=list(y), mode="lines+markers", name=plot_text(label)))
    if not fig.data:
        return None
    fig.update_layout(title="Where things happen: every analysis over relative depth",
                      xaxis={"title": "relative depth (0 = first layer, 1 = last)", "range": [-0.02, 1.02]},
                      yaxis={"title": "value (each scaled to 0..1)"}, height=480,
                      legend={"orientation": "h", "y": -0.25})
    return fig


def render(title: str, sections: Sequence[tuple[str, str]], results: dict[str, SectionResult], plotly_js: str,
           header: dict[str, Any]) -> str:
    """The whole HTML document. ``sections`` are ``(name, title)`` in order."""
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>",
             f"<style>{_CSS}</style>", f"<script>{plotly_js}</script></head><body>",
             f"<h1>{esc(title)}</h1>",
             '<p class="meta">' + esc(" · ".join(f"{k}: {v}" for k, v in header.items())) + "</p>"]
    toc = ['<nav><h2>Contents</h2><ol><li><a href="#summary">Cross-layer summary</a></li>']
    for name, section_title in sections:
        status = results[name].status if name in results else "skipped"
        mark = "" if status == "ok" else f" ({esc(status)})"
        toc.append(f'<li><a href="#{esc(name)}">{esc(section_title)}</a>{mark}</li>')
    parts.append("".join(toc) + "</ol></nav>")
    parts.append('<section id="summary"><h2>Cross-layer summary</h2>')
    summary = summary_figure(results)
    if summary is not None:
        parts.append(figure_html(summary, "fig-summary"))
    else:
        parts.append("<p>No section produced a per-layer curve.</p>")
    parts.append(_timing_table(sections, results) + "</section>")
    for name, section_title in sections:
        if name not in results:
            continue
        parts.append(_section_html(name, section_title, results[name]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _timing_table(sections: Sequence[tuple[str, str]], results: dict[str, SectionResult]) -> str:
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(results[n].status)}</td>"
                   f"<td>{results[n].seconds:.1f}</td><td>{results[n].forward_calls}</td></tr>"
                   for n, t in sections if n in results)
    return ("<table><tr><th>section</th><th>status</th><th>seconds</th><th>model forward calls</th></tr>"
            f"{rows}</table>")


def _section_html(name: str, title: str, result: SectionResult) -> str:
    esc = html.escape
    out = [f'<section id="{esc(name)}"><h2>{esc(title)}</h2>',
           f'<p class="meta">{result.seconds:.1f} s, {result.forward_calls} model forward calls</p>']
    if result.status != "ok":
        out.append(f'<div class="failed">This section failed: {esc(result.error)}</div></section>')
        return "\n".join(out)
    out += [f"<p>{esc(sentence)}</p>" for sentence in result.prose]
    for i, fig in enumerate(result.figures):
        out.append(figure_html(fig, f"fig-{esc(name)}-{i}"))
    for table_name, frame in result.tables.items():
        out.append(f"<h3>{esc(table_name)}</h3>" + table_html(frame))
    out.append("</section>")
    return "\n".join(out)


def numbers_json(results: dict[str, SectionResult]) -> dict[str, Any]:
    """``report.json``: every number shown, per section, with its status and time."""
    return {name: {"status": r.status, "error": r.error, "seconds": r.seconds, "forward_calls": r.forward_calls,
                   "prose": r.prose, "numbers": r.numbers,
                   "curves": {k: {"depth": list(x), "value": list(y)} for k, (x, y) in r.curves.items()}}
            for name, r in results.items()}


__all__ = ["figure_html", "numbers_json", "render", "summary_figure", "table_html"]
