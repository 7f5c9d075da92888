"""The report as one self-contained HTML file: plotly.js inlined once, every figure a
JSON spec drawn by it, every piece of text escaped, a table of contents, and the
cross-layer summary figure at the top."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from interlayer.plot_text import plot_text

from .base import SectionResult
from .summary import Panel, panels_figure, where_table

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav ol{columns:2} #layer-selector{position:sticky;top:0;background:#fff;padding:.4em 0;z-index:10;border-bottom:1px solid #eee}
details{margin:.6em 0} summary{cursor:pointer;color:#345} .failed{background:#fde8e8;border-left:4px solid #c0392b;padding:.6em 1em;white-space:pre-wrap}
.meta{color:#666;font-size:.9em} table{border-collapse:collapse;font-size:.85em;margin:1em 0}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right} th{background:#f5f5f5}
td:first-child,th:first-child{text-align:left} .figure{margin:1em 0;min-height:420px}
"""
MAX_TABLE_ROWS = 40
"""Rows of a table shown in the page (all of them are in its CSV)."""

_SELECTOR_JS = """
function interlayerHighlight(l){
  var box=document.getElementById('layer-selector'); if(!box){return;}
  var L=parseInt(box.dataset.nLayers), label=document.getElementById('layer-value');
  label.textContent = l<0 ? 'embeddings (relative depth 0)' : 'layer '+l+' (relative depth '+((l+1)/L).toFixed(2)+')';
  document.querySelectorAll('.figure[data-layer-axes]').forEach(function(div){
    if(!div.layout){return;}
    var shapes=(div.layout.shapes||[]).filter(function(s){return s.name!=='layer-highlight';});
    JSON.parse(div.dataset.layerAxes).forEach(function(a){
      var ref=a[0], scale=a[1], v = scale==='layer' ? l : scale==='hidden' ? l+1 : (l+1)/L;
      var other=(ref[0]==='x'?'y':'x')+ref.slice(1), s={type:'line',name:'layer-highlight',
        line:{color:'#e377c2',width:3},opacity:0.55,layer:'above'};
      if(ref[0]==='x'){s.xref=ref;s.x0=v;s.x1=v;s.yref=other+' domain';s.y0=0;s.y1=1;}
      else{s.yref=ref;s.y0=v;s.y1=v;s.xref=other+' domain';s.x0=0;s.x1=1;}
      shapes.push(s);});
    Plotly.relayout(div,{shapes:shapes});});
}
"""


def figure_html(fig: go.Figure, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` into it with the inlined plotly.js.
    ``</`` in the JSON is written ``<\\/`` so no string in a figure can close the script.
    A figure over layers carries its layer axes (:func:`layer_axes`) for the layer selector."""
    spec = pio.to_json(fig, validate=False).replace("</", "<\\/")
    axes = layer_axes(fig)
    data = f' data-layer-axes="{html.escape(json.dumps(axes))}"' if axes else ""
    return (f'<div class="figure" id="{div_id}"{data}></div>\n<script>(function(){{var f={spec};'
            f'Plotly.newPlot("{div_id}",f.data,f.layout,{{responsive:true,displaylogo:false}});}})();</script>')


def table_html(frame: Any, caption: str = "", csv: str | None = None) -> str:
    """A table collapsed under ``<details>`` (its caption and row count as the summary,
    a link to its CSV), at most :data:`MAX_TABLE_ROWS` rows shown."""
    esc = html.escape
    shown = frame.head(MAX_TABLE_ROWS)
    more = f'<p class="meta">{len(frame) - MAX_TABLE_ROWS} more rows in the CSV.</p>' if len(frame) > MAX_TABLE_ROWS else ""
    link = f' · <a href="{esc(csv)}">CSV</a>' if csv else ""
    body = shown.to_html(index=False, escape=True, float_format=lambda v: f"{v:.4g}", border=0, na_rep="")
    return (f"<details><summary>table: {esc(caption)} ({len(frame)} rows){link}</summary>{body}{more}</details>")


def summary_figure(results: dict[str, SectionResult]) -> go.Figure | None:
    """The summary's small multiples: every finished section's panels on one relative-depth axis."""
    return panels_figure({"": all_panels(results)})


def all_panels(results: dict[str, SectionResult]) -> list[Panel]:
    """The panels of every finished section, in report order."""
    return [p for r in results.values() if r.status == "ok" for p in r.panels]


def layer_axes(fig: go.Figure) -> list[tuple[str, str]]:
    """The axes of ``fig`` that run over layers, as ``(ref, scale)``: ``ref`` a plotly axis
    reference (``x``, ``y2``), ``scale`` how a layer maps onto it: ``layer`` (block index),
    ``hidden`` (hidden-state index, block + 1, or the position of site ``hidden.N`` on a
    category axis) or ``depth`` (relative depth). Read from the axis titles; an axis that
    ``matches`` a titled one (shared subplot axes) is one too."""
    layout = {k: v for k, v in fig.layout.to_plotly_json().items() if k.startswith(("xaxis", "yaxis"))}
    root = {key[0] + key[5:]: axis.get("matches") or key[0] + key[5:] for key, axis in layout.items()}
    scales: dict[str, str] = {}
    for key, axis in layout.items():
        title = str(((axis.get("title") or {}).get("text")) or "").lower()
        scale = ("depth" if "relative depth" in title else "hidden" if "hidden state" in title or title == "site"
                 else "layer" if "layer" in title else None)
        if scale is not None:
            scales[root[key[0] + key[5:]]] = scale
    return [(ref, scales[group]) for ref, group in root.items() if group in scales]


def render(title: str, sections: Sequence[tuple[str, str]], results: dict[str, SectionResult], plotly_js: str,
           header: dict[str, Any], *, n_layers: int | None = None, tables_href: str | None = None) -> str:
    """The whole HTML document. ``sections`` are ``(name, title)`` in order; ``n_layers``
    sets the layer selector's range; ``tables_href`` is the CSV folder, relative to the page."""
    esc = html.escape
    parts = [document_head(title, plotly_js), f"<h1>{esc(title)}</h1>",
             '<p class="meta">' + esc(" · ".join(f"{k}: {v}" for k, v in header.items())) + "</p>"]
    toc = ['<nav><h2>Contents</h2><ol><li><a href="#summary">Cross-layer summary</a></li>']
    for name, section_title in sections:
        status = results[name].status if name in results else "skipped"
        mark = "" if status == "ok" else f" ({esc(status)})"
        toc.append(f'<li><a href="#{esc(name)}">{esc(section_title)}</a>{mark}</li>')
    parts.append("".join(toc) + "</ol></nav>")
    if n_layers:
        parts.append(layer_selector(n_layers))
    parts.append(summary_html(all_panels(results)))
    parts.append(_timing_table(sections, results) + "</section>")
    for name, section_title in sections:
        if name in results:
            parts.append(_section_html(name, section_title, results[name], tables_href))
    parts.append("</body></html>")
    return "\n".join(parts)


def document_head(title: str, plotly_js: str) -> str:
    """``<!DOCTYPE html>`` to ``<body>``: the title, the style sheet, plotly.js and the layer selector's script."""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{plotly_js}</script><script>{_SELECTOR_JS}</script></head><body>")


def summary_html(panels: list[Panel], models: dict[str, list[Panel]] | None = None) -> str:
    """The cross-layer summary: the small multiples, one sentence per analysis and the
    "where things happen" table (left open, as the page's answer)."""
    esc = html.escape
    out = ['<section id="summary"><h2>Cross-layer summary</h2>']
    fig = panels_figure(models or {"": panels})
    if fig is None:
        out.append("<p>No section produced a per-layer result.</p>")
        return "\n".join(out)
    out.append(figure_html(fig, "fig-summary"))
    out.append('<p class="meta">Every panel places block l of L at relative depth (l + 1) / L and the embeddings at 0; '
               "shaded: the 95% interval named in the table; dashed: the panel's layer of interest.</p>")
    out.append("<ul class=\"findings\">" + "".join(f"<li><b>{esc(p.analysis)}.</b> {esc(p.sentence)}</li>"
                                                  for p in panels if p.sentence) + "</ul>")
    table = where_table(panels)
    table["interval"] = [p.interval or "none" for p in panels]
    table["data"] = [p.data for p in panels]
    out.append("<h3>Where things happen</h3>" + table.to_html(index=False, escape=True, border=0, na_rep="",
                                                             float_format=lambda v: f"{v:.4g}"))
    return "\n".join(out)


def layer_selector(n_layers: int) -> str:
    """A slider that moves one highlighted layer across every layer-wise figure."""
    return (f'<div id="layer-selector" data-n-layers="{n_layers}"><label for="layer-range">Highlight a layer: </label>'
            f'<input type="range" id="layer-range" min="-1" max="{n_layers - 1}" value="-1" step="1" '
            'oninput="interlayerHighlight(parseInt(this.value))"> <span id="layer-value">none</span></div>')


def _timing_table(sections: Sequence[tuple[str, str]], results: dict[str, SectionResult]) -> str:
    rows = "".join(f"<tr><td>{html.escape(t)}</td><td>{html.escape(results[n].status)}</td>"
                   f"<td>{results[n].seconds:.1f}</td><td>{results[n].forward_calls}</td></tr>"
                   for n, t in sections if n in results)
    return ("<details><summary>time and model forward calls per section</summary><table><tr><th>section</th>"
            f"<th>status</th><th>seconds</th><th>model forward calls</th></tr>{rows}</table></details>")


def _section_html(name: str, title: str, result: SectionResult, tables_href: str | None = None) -> str:
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
        out.append(table_html(frame, table_name, f"{tables_href}/{name}.{table_name}.csv" if tables_href else None))
    out.append("</section>")
    return "\n".join(out)


def numbers_json(results: dict[str, SectionResult]) -> dict[str, Any]:
    """``report.json``: every number shown, per section, with its status and time."""
    return {name: {"status": r.status, "error": r.error, "seconds": r.seconds, "forward_calls": r.forward_calls,
                   "prose": r.prose, "numbers": r.numbers,
                   "panels": [p.to_json() for p in r.panels]}
            for name, r in results.items()}


__all__ = ["MAX_TABLE_ROWS", "all_panels", "document_head", "figure_html", "layer_axes", "layer_selector", "numbers_json",
           "render", "summary_figure", "summary_html", "table_html"]
