"""Linear probes per layer (Alain & Bengio 2016), with a control task (Hewitt &
Liang 2019, "Designing and Interpreting Probes with Control Tasks").

At each layer a scikit-learn logistic regression on standardised activations is
scored by stratified k-fold cross-validation. The control task refits the same probe
on the labels shuffled (seeded): what a probe of this capacity reaches without any
real signal. Selectivity = accuracy - control accuracy.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.adapter import ModelAdapter
from interlayer.errors import InterlayerError
from interlayer.activations import collect


@dataclass
class ProbeResult:
    """Cross-validated accuracy per layer, its 95% CI over folds, and the control."""

    sites: list[str]
    accuracy: list[float]
    ci_low: list[float]
    ci_high: list[float]
    control: list[float]
    folds: int
    n_examples: int
    n_classes: int
    chance: float

    @property
    def selectivity(self) -> list[float]:
        return [a - c for a, c in zip(self.accuracy, self.control)]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"site": self.sites, "accuracy": self.accuracy, "ci_low": self.ci_low,
                             "ci_high": self.ci_high, "control": self.control, "selectivity": self.selectivity})

    def plot(self) -> go.Figure:
        frame = self.to_frame()
        x = [html.escape(s) for s in self.sites]
        fig = go.Figure([
            go.Scatter(x=x + x[::-1], y=list(frame.ci_high) + list(frame.ci_low)[::-1], fill="toself", opacity=0.2,
                       line={"width": 0}, showlegend=False, hoverinfo="skip"),
            go.Scatter(x=x, y=frame.accuracy, name="probe accuracy", mode="lines+markers"),
            go.Scatter(x=x, y=frame.control, name="control (shuffled labels)", mode="lines+markers"),
            go.Scatter(x=x, y=[self.chance] * len(x), name="chance", line={"dash": "dot"}),
        ])
        fig.update_layout(title=f"Linear probes: {self.n_examples} examples, {self.n_classes} classes, {self.folds}-fold CV",
                          xaxis_title="site", yaxis={"title": "accuracy", "range": [0, 1.02]})
        return fig


def _fold_ci(scores: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(scores) < 2:
        return float(scores.mean()), float(scores.mean())
    half = stats.t.ppf(0.975, len(scores) - 1) * scores.std(ddof=1) / math.sqrt(len(scores))
    return float(scores.mean() - half), float(scores.mean() + half)


def probe_features(features: dict[str, torch.Tensor] | Sequence[torch.Tensor], labels: Sequence[Any], *,
                   folds: int = 5, seed: int = 0, max_iter: int = 1000, c: float = 1.0) -> ProbeResult:
    """Probe each ``[n, d]`` feature matrix (one per site) for ``labels``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if not isinstance(features, dict):
        features = {str(i): f for i, f in enumerate(features)}
    y = np.asarray(list(labels))
    if y.size == 0 or any(v is None for v in y.tolist()):
        raise InterlayerError("the dataset has no labels (or some are missing); a probe needs one label per example")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise InterlayerError(f"a probe needs at least 2 classes, got {len(classes)}: {classes.tolist()}")
    if counts.min() < folds:
        raise InterlayerError(f"the rarest class has {counts.min()} examples, fewer than folds={folds}")
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(y)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = {"accuracy": [], "ci_low": [], "ci_high": [], "control": []}
    for name, x in features.items():
        x = x.float().cpu().numpy()
        if x.shape[0] != len(y):
            raise InterlayerError(f"{name} has {x.shape[0]} rows but there are {len(y)} labels")
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=c))
        scores = cross_val_score(probe, x, y, cv=splitter)
        control = cross_val_score(probe, x, shuffled, cv=splitter)
        low, high = _fold_ci(scores)
        out["accuracy"].append(float(scores.mean()))
        out["ci_low"].append(low)
        out["ci_high"].append(high)
        out["control"].append(float(control.mean()))
    chance = float(counts.max() / counts.sum())
    return ProbeResult(list(features), out["accuracy"], out["ci_low"], out["ci_high"], out["control"], folds,
                       len(y), len(classes), chance)


def probe_layers(model: ModelAdapter, texts: Sequence[str], labels: Sequence[Any], *, sites: str | Sequence[str] = "resid_post.*",
                 select: str = "weighted_mean", folds: int = 5, seed: int = 0, batch_size: int = 16,
                 progress: bool = True) -> ProbeResult:
    """Collect one vector per text at every site from the store (``select`` is a
    pooled or ``last`` selection) and probe each site for ``labels``."""
    if len(texts) != len(labels):
        raise InterlayerError(f"{len(texts)} texts but {len(labels)} labels")
    if select not in ("weighted_mean", "mean", "last"):
        raise InterlayerError(f"select={select!r}; a probe needs one vector per text: 'weighted_mean', 'mean' or 'last'")
    acts = collect(model, list(texts), sites, select=select, batch_size=batch_size, progress=progress)
    return probe_features({s: acts[s] for s in acts.sites}, labels, folds=folds, seed=seed)
