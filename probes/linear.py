"""Linear probes per layer (Alain & Bengio 2016), with a control task (Hewitt &
Liang 2019, "Designing and Interpreting Probes with Control Tasks").

At each layer a scikit-learn logistic regression on standardised activations is
scored by stratified k-fold cross-validation. The control task refits the same probe
on the labels shuffled (seeded): what a probe of this capacity reaches without any
real signal. Selectivity = accuracy - control accuracy.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.model.adapter import ModelAdapter
from interlayer.errors import InterlayerError
from interlayer.store.collect import collect
from interlayer.intervals import LEVEL, proportion_interval
from interlayer.results import Result, require


@dataclass
class ProbeResult(Result):
    """Cross-validated accuracy per layer with its 95% Wilson interval (every example is
    tested once, so the accuracy is a proportion of ``n_examples``), and the control."""

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
        """Per site: probe accuracy minus control-task accuracy (Hewitt & Liang 2019), both proportions in [0, 1]."""
        return [a - c for a, c in zip(self.accuracy, self.control)]

    def to_frame(self) -> pd.DataFrame:
        """Per site: accuracy, its interval, the control accuracy and the selectivity."""
        return pd.DataFrame({"site": self.sites, "accuracy": self.accuracy, "ci_low": self.ci_low,
                             "ci_high": self.ci_high, "control": self.control, "selectivity": self.selectivity})

    def to_json(self) -> dict[str, Any]:
        """Every field: what :meth:`save` writes."""
        return {"sites": self.sites, "accuracy": self.accuracy, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "control": self.control, "folds": self.folds, "n_examples": self.n_examples,
                "n_classes": self.n_classes, "chance": self.chance, "level": LEVEL}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "ProbeResult":
        """The result :meth:`to_json` described."""
        require(payload, "sites", "accuracy", "ci_low", "ci_high", "control", "folds", "n_examples", "n_classes",
                "chance", what="ProbeResult")
        return cls(list(payload["sites"]), [float(v) for v in payload["accuracy"]],
                   [float(v) for v in payload["ci_low"]], [float(v) for v in payload["ci_high"]],
                   [float(v) for v in payload["control"]], int(payload["folds"]), int(payload["n_examples"]),
                   int(payload["n_classes"]), float(payload["chance"]))

    def headline(self) -> dict[str, Any]:
        """Examples, classes and the best site with its interval."""
        best = int(np.argmax(self.accuracy))
        return {"examples": self.n_examples, "classes": self.n_classes, "folds": self.folds, "chance": self.chance,
                "best site": self.sites[best],
                "best accuracy": f"{self.accuracy[best]:.3f} [{self.ci_low[best]:.3f}, {self.ci_high[best]:.3f}]",
                "control there": self.control[best]}

    def plot(self) -> go.Figure:
        """Accuracy per site with its 95% Wilson band, the control and chance."""
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
                          xaxis_title="site", yaxis={"title": "accuracy", "range": [0, 1]})
        return fig


def _accuracy_interval(scores: np.ndarray, test_sizes: list[int]) -> tuple[float, float]:
    """The 95% Wilson interval of the cross-validated accuracy: every example is tested
    once, so the folds' correct predictions sum to a count out of all examples."""
    correct = round(sum(float(s) * n for s, n in zip(scores, test_sizes)))
    return proportion_interval(correct, int(sum(test_sizes)))


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
    test_sizes = [len(test) for _, test in splitter.split(np.zeros((len(y), 1)), y)]
    for name, x in features.items():
        x = x.float().cpu().numpy()
        if x.shape[0] != len(y):
            raise InterlayerError(f"{name} has {x.shape[0]} rows but there are {len(y)} labels")
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=c))
        scores = cross_val_score(probe, x, y, cv=splitter)
        control = cross_val_score(probe, x, shuffled, cv=splitter)
        low, high = _accuracy_interval(scores, test_sizes)
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
