"""The cross-layer summary: one panel per analysis on a shared relative-depth axis, each in
its own units with its 95% interval and its layer of interest marked, one sentence per
analysis written from its numbers, and a closing "where things happen" table.

Every panel places block ``l`` of ``L`` at relative depth ``(l + 1) / L`` and the
embeddings at 0 (:func:`interlayer.layers.relative_depth`), so hidden state ``i`` of the
MEXA and probe sections (the output of block ``i - 1``) and block ``i - 1`` of the lens
sections fall on the same x.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from interlayer.layers import relative_depth
from interlayer.plot_text import plot_text

PANEL_COLUMNS = 2
"""Panels per row of the summary figure."""


@dataclass
class Panel:
    """One analysis in the summary: a per-layer quantity in its own units, its 95% interval
    (``low``/``high``, or ``None`` with ``interval`` saying why), the layer that matters
    (``mark_layer``, ``None`` for the embeddings, shown when ``mark_what`` is set) and the
    sentence the summary prints for it."""

    analysis: str
    """Short name ("Logit lens", "MEXA", ...): the panel's title and the table's first column."""
    quantity: str
    """What is plotted, with its unit ("KL(final ‖ layer), nats")."""
    n_layers: int
    layers: list[int | None]
    """Block index of each point (``None``: the embeddings)."""
    value: list[float]
    low: list[float] | None = None
    high: list[float] | None = None
    interval: str = ""
    """How the interval was computed ("95% bootstrap over 24 words"), or why there is none."""
    mark_layer: int | None = None
    mark_what: str = ""
    """What the marked layer is ("first layer below 1 nat"); empty: no layer marked."""
    sentence: str = ""
    reference: float | None = None
    """A horizontal reference line (chance, a random direction's effect), labelled ``reference_label``."""
    reference_label: str = ""
    data: str = ""
    """The data the analysis used ("FLORES-200, 21 languages x 20 sentences")."""

    @property
    def depth(self) -> list[float]:
        """Relative depth of every point (0 = embeddings, 1 = the last block)."""
        return [relative_depth(layer, self.n_layers) for layer in self.layers]

    @property
    def marked(self) -> bool:
        """Whether the panel marks a layer of interest."""
        return bool(self.mark_what)

    @property
    def mark_depth(self) -> float | None:
        """Relative depth of the marked layer (``None`` when none is marked)."""
        return relative_depth(self.mark_layer, self.n_layers) if self.marked else None

    def mark_value(self) -> float | None:
        """The plotted value at the marked layer (``None`` when it is not a plotted point)."""
        if not self.marked or self.mark_layer not in self.layers:
            return None
        return self.value[self.layers.index(self.mark_layer)]

    def to_json(self) -> dict[str, Any]:
        """Every field, JSON-safe (NaN as ``None``), and the relative depths."""
        payload = asdict(self)
        for key in ("value", "low", "high"):
            if payload[key] is not None:
                payload[key] = [_safe(v) for v in payload[key]]
        payload["reference"] = None if self.reference is None else _safe(self.reference)
        payload["depth"] = self.depth
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Panel":
        """The panel :meth:`to_json` wrote."""
        names = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in payload.items() if k in names}
        for key in ("value", "low", "high"):
            if values.get(key) is not None:
                values[key] = [math.nan if v is None else float(v) for v in values[key]]
        return cls(**values)


def _safe(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def layer_name(layer: int | None) -> str:
    """``"embeddings"`` or ``"layer 5"``."""
    return "embeddings" if layer is None else f"layer {layer}"


def where_table(panels: list[Panel]) -> pd.DataFrame:
    """The closing "where things happen" table: per analysis, its layer of interest, its
    relative depth, what marks it and the value there."""
    rows = [{"analysis": p.analysis, "layer of interest": layer_name(p.mark_layer) if p.marked else "none",
             "relative depth": round(p.mark_depth, 3) if p.marked else None, "what marks it": p.mark_what or "-",
             "value there": p.mark_value(), "quantity": p.quantity} for p in panels]
    return pd.DataFrame(rows, columns=["analysis", "layer of interest", "relative depth", "what marks it", "value there",
                                       "quantity"])


def _axis(kind: str, index: int) -> str:
    return kind if index == 1 else f"{kind}{index}"


def _band(panel: Panel, color: str, name: str, group: str, show_legend: bool) -> list[go.Scatter]:
    """The interval as a filled polygon, then the line with markers."""
    x = panel.depth
    traces = []
    if panel.low is not None and panel.high is not None:
        traces.append(go.Scatter(x=x + x[::-1], y=list(panel.high) + list(panel.low)[::-1], fill="toself",
                                 fillcolor=color, opacity=0.18, line={"width": 0}, hoverinfo="skip", showlegend=False,
                                 legendgroup=group, name=f"{name} 95% interval"))
    hover = [f"{layer_name(l)} (depth {d:.2f}): {v:.4g}" for l, d, v in zip(panel.layers, x, panel.value)]
    traces.append(go.Scatter(x=x, y=list(panel.value), mode="lines+markers", line={"color": color}, name=plot_text(name),
                             legendgroup=group, showlegend=show_legend, text=hover, hoverinfo="text"))
    return traces


COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def panels_figure(models: dict[str, list[Panel]], title: str = "Where things happen") -> go.Figure | None:
    """Small multiples, one per analysis, on one shared relative-depth axis; with several
    models (``{model: panels}``) each analysis both have is drawn with one line per model.
    The marked layer is a dashed vertical line in the model's colour."""
    from plotly.subplots import make_subplots

    order: list[str] = []
    for panels in models.values():
        order += [p.analysis for p in panels if p.analysis not in order]
    if len(models) > 1:  # the analyses every model has
        order = [a for a in order if all(any(p.analysis == a for p in ps) for ps in models.values())]
    if not order:
        return None
    rows = math.ceil(len(order) / PANEL_COLUMNS)
    first = {a: next(p for ps in models.values() for p in ps if p.analysis == a) for a in order}
    fig = make_subplots(rows=rows, cols=PANEL_COLUMNS, shared_xaxes="all", vertical_spacing=min(0.12, 0.5 / rows),
                        horizontal_spacing=0.1, subplot_titles=[plot_text(f"{a}: {first[a].quantity}") for a in order])
    for m, (model, panels) in enumerate(models.items()):
        color = COLORS[m % len(COLORS)]
        by_name = {p.analysis: p for p in panels}
        for i, analysis in enumerate(order):
            panel = by_name.get(analysis)
            if panel is None:
                continue
            row, col = i // PANEL_COLUMNS + 1, i % PANEL_COLUMNS + 1
            name = model if len(models) > 1 else analysis
            for trace in _band(panel, color, name, model, show_legend=len(models) > 1 and i == 0):
                fig.add_trace(trace, row=row, col=col)
            ax = i + 1
            if panel.marked:
                fig.add_shape(type="line", x0=panel.mark_depth, x1=panel.mark_depth, y0=0, y1=1,
                              xref=_axis("x", ax), yref=f"{_axis('y', ax)} domain",
                              line={"color": color, "dash": "dash", "width": 1.5})
                fig.add_annotation(x=panel.mark_depth, y=1 - 0.12 * m, xref=_axis("x", ax), yref=f"{_axis('y', ax)} domain",
                                   text=plot_text(f"{layer_name(panel.mark_layer)}: {panel.mark_what}"), showarrow=False,
                                   xanchor="left" if panel.mark_depth < 0.55 else "right", font={"size": 10, "color": color}, bgcolor="rgba(255,255,255,0.7)")
            if panel.reference is not None and m == 0:
                fig.add_shape(type="line", x0=0, x1=1, y0=panel.reference, y1=panel.reference, xref=_axis("x", ax),
                              yref=_axis("y", ax), line={"color": "#888", "dash": "dot", "width": 1})
                fig.add_annotation(x=1, y=panel.reference, xref=_axis("x", ax), yref=_axis("y", ax), xanchor="right",
                                   yanchor="bottom", text=plot_text(panel.reference_label), showarrow=False,
                                   font={"size": 9, "color": "#666"})
    fig.update_xaxes(range=[-0.03, 1.03], showticklabels=True)
    for col in range(1, PANEL_COLUMNS + 1):
        fig.update_xaxes(title_text="relative depth (0 = embeddings, 1 = last layer)", row=rows, col=col)
    fig.update_annotations(font_size=11, selector={"showarrow": False, "xref": "paper"})
    fig.update_layout(title=plot_text(title), height=max(360, 250 * rows + 120), margin={"t": 90},
                      legend={"orientation": "h", "y": 1.06, "x": 0}, showlegend=len(models) > 1)
    return fig


@dataclass
class Comparison:
    """Two or more reports' panels side by side (``interlayer report compare``)."""

    models: dict[str, list[Panel]] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Per analysis, each model's layer of interest and its relative depth."""
        analyses: list[str] = []
        for panels in self.models.values():
            analyses += [p.analysis for p in panels if p.analysis not in analyses]
        rows = []
        for analysis in analyses:
            row: dict[str, Any] = {"analysis": analysis}
            for model, panels in self.models.items():
                panel = next((p for p in panels if p.analysis == analysis), None)
                row[f"{model}: layer"] = (layer_name(panel.mark_layer) if panel.marked else "none") if panel else "absent"
                row[f"{model}: depth"] = round(panel.mark_depth, 3) if panel and panel.marked else None
            rows.append(row)
        return pd.DataFrame(rows)


__all__ = ["COLORS", "Comparison", "PANEL_COLUMNS", "Panel", "layer_name", "panels_figure", "where_table"]
