"""The sweep's comparison: the Pareto table (:data:`TABLE_COLUMNS`), each architecture at
matched L0 (:func:`matched_l0`), the figure (:func:`pareto_figure`), and the finished
sweep as a result (:class:`SAESweep`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interlayer.errors import InterlayerError, choices
from interlayer.results import Result, decode_frame, encode_frame, require
from interlayer.plot_text import plot_text

from .grid import family as line_of

TABLE_COLUMNS = ("member", "arch", "afa_form", "mode", "k", "coefficient", "l0", "explained_variance", "nmse",
                 "ce_loss_recovered", "kl_sae", "mse_standardized", "train_mse_last", "dead_frac", "dead_frac_train",
                 "dense_frac", "eps_lbo_median", "eps_lbo_form", "pareto_ev", "train_tokens", "train_seconds",
                 "eval_tokens")
"""The columns of ``pareto.csv``, in order (documented in the README)."""


def pareto_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The sweep's table (columns :data:`TABLE_COLUMNS`), sorted by family then L0, with
    ``pareto_ev`` marking the members no other member beats on both L0 (lower) and
    explained variance (higher)."""
    frame = pd.DataFrame(rows)
    for col in TABLE_COLUMNS:
        if col not in frame:
            frame[col] = None
    frame["pareto_ev"] = [not any((o.l0 <= r.l0 and o.explained_variance >= r.explained_variance and
                                   (o.l0 < r.l0 or o.explained_variance > r.explained_variance))
                                  for o in frame.itertuples()) for r in frame.itertuples()] if len(frame) else []
    return frame[list(TABLE_COLUMNS)].sort_values(["arch", "afa_form", "mode", "l0"], na_position="first",
                                                  kind="stable").reset_index(drop=True)


def _family(row: Any) -> str:
    """A table row's :func:`~interlayer.saes.grid.family`."""
    return line_of(str(row.arch), row.afa_form if isinstance(row.afa_form, str) else None, row.mode == "authors-exact")


LOWER_IS_BETTER = frozenset({"nmse", "mse_standardized", "kl_sae", "train_mse_last"})
"""Table columns where the smaller value is the better SAE."""


def matched_l0(table: pd.DataFrame, metric: str = "explained_variance",
               l0s: list[float] | None = None) -> pd.DataFrame:
    """Each architecture's ``metric`` at matched L0: one row per L0 (by default every
    member's own L0), one column per family (architecture; top-AFA per form), and
    ``best``, the family with the best value at that L0 (highest, or lowest for
    :data:`LOWER_IS_BETTER`; missing where fewer than two families have a value). A family's value is interpolated linearly in log L0 between
    its two neighbouring members; outside its members' L0 range it is NaN (no
    extrapolation), so a one-member family has a value only at its own L0."""
    if metric not in table.columns:
        raise InterlayerError(f"no column {metric!r} in the table; valid choices: {choices(list(table.columns))}")
    families = {}
    for row in table.itertuples():
        if pd.notna(row.l0) and pd.notna(getattr(row, metric)) and row.l0 > 0:
            families.setdefault(_family(row), []).append((math.log(row.l0), float(getattr(row, metric))))
    points = sorted(set(l0s if l0s is not None else [float(v) for v in table.l0 if pd.notna(v) and v > 0]))
    frame = pd.DataFrame(index=pd.Index(points, name="l0"))
    for family, pairs in families.items():
        pairs.sort()
        frame[family] = [_interpolate(pairs, math.log(l0)) for l0 in points]
    best = []
    for _, row in frame.iterrows():
        known = row.dropna()
        best.append(None if len(known) < 2 else known.idxmin() if metric in LOWER_IS_BETTER else known.idxmax())
    frame["best"] = best
    return frame


def _interpolate(pairs: list[tuple[float, float]], x: float) -> float:
    """The piecewise-linear value at ``x`` through sorted ``(x, y)`` pairs; NaN outside them."""
    tol = 1e-9
    for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]):
        if x0 - tol <= x <= x1 + tol:
            return y0 if x1 - x0 < tol else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    near = [y for px, y in pairs if abs(px - x) <= tol]
    return near[0] if near else math.nan


PANELS = (("explained_variance", "explained variance"), ("nmse", "NMSE"), ("ce_loss_recovered", "CE loss recovered"),
          ("mse_standardized", "standardised per-element MSE (authors')"))


def pareto_figure(table: pd.DataFrame, title: str = "SAE sweep") -> go.Figure:
    """L0 (log) against each metric of :data:`PANELS`, one line per architecture (top-AFA
    per form), members in order of L0."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[plot_text(p[1]) for p in PANELS],
                        horizontal_spacing=0.1, vertical_spacing=0.16)
    families = list(dict.fromkeys(_family(r) for r in table.itertuples()))
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
    for f, family in enumerate(families):
        part = table[[_family(r) == family for r in table.itertuples()]].sort_values("l0")
        labels = [plot_text(str(m)) for m in part.member]
        for p, (col, name) in enumerate(PANELS):
            fig.add_trace(go.Scatter(x=part.l0, y=part[col], mode="lines+markers", name=plot_text(family),
                                     legendgroup=family, showlegend=p == 0, text=labels,
                                     line={"color": palette[f % len(palette)]},
                                     hovertemplate="%{text}<br>L0 %{x:.1f}<br>" + plot_text(name) + " %{y:.4g}<extra></extra>"),
                          row=p // 2 + 1, col=p % 2 + 1)
    for p in range(len(PANELS)):
        fig.update_xaxes(type="log", title_text="L0", row=p // 2 + 1, col=p % 2 + 1)
    for p in (1, 3):  # NMSE and the authors' MSE: log
        fig.update_yaxes(type="log", row=p // 2 + 1, col=p % 2 + 1)
    fig.update_layout(title=plot_text(title), height=760, width=1100)
    return fig


@dataclass
class SAESweep(Result):
    """A finished sweep: its table, figure and where it was written.

    :meth:`load` reads either a :meth:`save` file or the sweep's own ``--out`` directory
    (its ``pareto.csv`` and ``sweep.json``)."""

    table: pd.DataFrame
    out: Path
    trained: list[str]
    reused: list[str]
    failed: dict[str, str]

    def to_frame(self) -> pd.DataFrame:
        """The Pareto table: one row per member (:func:`pareto_table`)."""
        return self.table

    def plot(self) -> go.Figure:
        """The Pareto figure (:func:`pareto_figure`)."""
        return pareto_figure(self.table)

    def to_json(self) -> dict[str, Any]:
        """The table (``{column: values}``), the directory and which members were trained, reused or failed."""
        return {"table": encode_frame(self.table), "out": str(self.out), "trained": self.trained,
                "reused": self.reused, "failed": self.failed}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SAESweep":
        """The result :meth:`to_json` described."""
        require(payload, "table", "out", what="SAESweep")
        return cls(decode_frame(payload["table"]), Path(payload["out"]), list(payload.get("trained", [])),
                   list(payload.get("reused", [])), dict(payload.get("failed", {})))

    @classmethod
    def load(cls, path: str | Path) -> "SAESweep":
        """A :meth:`save` file, or a sweep's ``--out`` directory (``pareto.csv`` and ``sweep.json``)."""
        path = Path(path).expanduser()
        if not path.is_dir():
            return super().load(path)
        if not (path / "pareto.csv").is_file() or not (path / "sweep.json").is_file():
            raise InterlayerError(f"{path} is not a finished SAE sweep (no pareto.csv and sweep.json)")
        info = json.loads((path / "sweep.json").read_text())
        failed = dict(info.get("failed", {}))
        return cls(pd.read_csv(path / "pareto.csv"), path, [m for m in info.get("finished", []) if m not in failed],
                   [], failed)

    def headline(self) -> dict[str, Any]:
        """Members, failures and where the sweep lives."""
        return {"members": len(self.table), "trained now": len(self.trained), "reused": len(self.reused),
                "failed": len(self.failed), "out": str(self.out)}

    def matched_l0(self, metric: str = "explained_variance", l0s: list[float] | None = None) -> pd.DataFrame:
        """Each architecture's ``metric`` at matched L0 (:func:`matched_l0`)."""
        return matched_l0(self.table, metric, l0s)


SAESweepResult = SAESweep
"""Deprecated name of :class:`SAESweep` (one release)."""
SweepResult = SAESweep
"""Deprecated name of :class:`SAESweep` (one release; it clashed with the steering sweep's)."""

__all__ = ["TABLE_COLUMNS", "LOWER_IS_BETTER", "PANELS", "pareto_table", "matched_l0", "pareto_figure", "SAESweep",
           "SAESweepResult", "SweepResult"]
