"""Figures of causal traces (plotly): the mean indirect effect by token group and layer."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

TITLES = {"resid": "residual stream (block output)", "mlp": "MLP outputs (window)", "attn": "attention outputs (window)"}


def trace_heatmaps(trace: Any) -> Any:
    """One heatmap per kind: rows are ROME's token groups, columns layers, colour the mean
    indirect effect over the traced facts (probability restored minus corrupted)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    kinds = list(trace.kinds)
    fig = make_subplots(rows=1, cols=len(kinds), shared_yaxes=True, subplot_titles=[TITLES[k] for k in kinds],
                        horizontal_spacing=0.04)
    for col, kind in enumerate(kinds, 1):
        with warnings.catch_warnings():  # a group no fact has (middle subject tokens of one-token subjects)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(trace.effects(kind), 0)
        fig.add_trace(go.Heatmap(z=mean, x=list(range(trace.n_layers)), y=list(trace.group_names), coloraxis="coloraxis",
                                 hovertemplate="layer %{x}<br>%{y}<br>effect %{z:.4f}<extra></extra>"), 1, col)
        fig.update_xaxes(title_text="layer", row=1, col=col)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Causal tracing of {len(trace.facts)} facts ({trace.model}): average indirect effect",
                      coloraxis={"colorscale": "Purples", "colorbar": {"title": "effect"}}, height=360,
                      width=max(520, 380 * len(kinds)))
    return fig
