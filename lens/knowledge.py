"""Knowledge layers: where a model integrates external (retrieved) knowledge.

This project's reading of LFD (Sun et al. 2025, "Layer Fused Decoding to Exploit
External Knowledge in Retrieval-Augmented Generation", arXiv 2508.19614; its code is
not public and its equations could not be read here, so these definitions are ours):

* **IKS of layer l** (internal knowledge score): how much block ``l``'s FFN changes the
  next-token prediction, the Jensen-Shannon divergence between the distributions decoded
  (final norm + unembedding, through the shared :class:`~interlayer.decoding.LayerDecoder`)
  from ``resid_mid.l`` (before the FFN) and ``resid_post.l`` (after it), at the position
  being predicted. ``metric="cosine"``: the cosine distance between the two states.
* **Candidates**: the even-numbered blocks (0-based) of the latter half,
  ``[l for l in range(N // 2, N) if l % 2 == 0]`` (the paper follows DoLa: 16-30 of 32).
* **Fusion layer** ``l* = argmin`` IKS over the candidates, per decoding step (default,
  DoLa-style dynamic selection) or once per example at the prompt's last position.
* **SimHidden_l** (the paper's analysis): the cosine between ``mlp_out.l`` at the last
  position of the prompt with the context and with the context's answer-bearing sentence
  removed.

The IKS is computed in one place, :func:`iks`; the decoding itself (LFD, DoLa) is
:mod:`interlayer.lens.fused_decoding`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.intervals import LEVEL, mean_interval
from interlayer.options import int_list
from interlayer.results import Result, decode_array, encode_array, require
from interlayer.plot_text import plot_text

from .decoding_options import FUSION_SELECTIONS, IKS_METRICS

LN2 = math.log(2.0)


# ------------------------------------------------------------------ divergences
def jsd(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence in nats between distributions given as log-probabilities
    over the last dimension: ``½ KL(p‖m) + ½ KL(q‖m)``, ``m = (p + q) / 2``. Symmetric, 0
    for identical distributions, at most ``ln 2``; zero-probability tokens contribute 0.

    Computed as ``½ Σ p log p + ½ Σ q log q - Σ m log m`` with row-wise dot products, a
    few rows at a time so the temporaries stay in cache (it runs at every decoding step:
    4x faster than whole-tensor passes on a CPU)."""
    if logp.shape != logq.shape:
        raise InterlayerError(f"jsd needs two distributions of one shape, got {tuple(logp.shape)} and {tuple(logq.shape)}")
    lead = logp.shape[:-1]
    flat_p, flat_q = logp.reshape(-1, logp.shape[-1]), logq.reshape(-1, logq.shape[-1])
    step = max(1, _CHUNK_ELEMENTS // max(1, logp.shape[-1]))
    out = torch.cat([_jsd_rows(flat_p[i:i + step], flat_q[i:i + step]) for i in range(0, flat_p.shape[0], step)]
                    or [flat_p.new_zeros(0)])
    return out.reshape(lead)


def _jsd_rows(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    logp, logq = logp.float().clamp_min(_LOG_FLOOR), logq.float().clamp_min(_LOG_FLOOR)
    p, q = logp.exp(), logq.exp()
    mix = p + q  # 2m
    log_m = torch.log(mix.clamp_min(_TINY)) - LN2
    dot = torch.linalg.vecdot
    return (0.5 * (dot(p, logp) + dot(q, logq) - dot(mix, log_m))).clamp(0.0, LN2)


_CHUNK_ELEMENTS = 1 << 18
_LOG_FLOOR = -1e4  # log 0 -> a finite floor, so 0 · log 0 = 0
_TINY = torch.finfo(torch.float32).tiny


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` over the last dimension."""
    return 1.0 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def iks(mid: torch.Tensor, post: torch.Tensor, metric: str = "jsd") -> torch.Tensor:
    """The IKS of each layer from both sides of its FFN (see the module docstring), on the CPU.

    ``metric="jsd"``: ``mid`` and ``post`` are the logits decoded from ``resid_mid.l`` and
    ``resid_post.l`` (``[layers, rows, vocab]``), ``IKS = JSD(softmax(mid) ‖ softmax(post))``;
    ``"cosine"``: they are the states themselves, ``IKS = 1 - cos(mid, post)``. Returns
    ``[layers, rows]``."""
    check_metric(metric)
    if metric == "cosine":
        return cosine_distance(mid, post).cpu()
    # one layer at a time: the log-probabilities of every layer at once are [2 x layers, rows,
    # vocab] float32, 0.2 GB a step for Gemma-2-2B's 26 layers x 4 rows x 256,000 tokens
    if len(mid) == 0:
        return mid.new_zeros((0, *mid.shape[1:-1])).cpu()
    return torch.stack([jsd(torch.log_softmax(mid[i], -1), torch.log_softmax(post[i], -1))
                        for i in range(len(mid))]).cpu()


def iks_scores(decoder: LayerDecoder, mid: torch.Tensor, post: torch.Tensor, layers: Sequence[int],
               metric: str = "jsd", *, keep_post_logits: bool = False) -> Any:
    """IKS of ``layers`` from their ``resid_mid`` and ``resid_post`` states, each
    ``[len(layers), rows, d]``: ``[len(layers), rows]`` (:func:`iks`). For ``jsd`` all the
    states are decoded by ``decoder`` in one head call (:meth:`LayerDecoder.layer_logits`).
    ``keep_post_logits``: return ``(iks, logits of the resid_post states or None)``."""
    check_metric(metric)
    if metric == "cosine":
        values = iks(mid, post, "cosine")
        return (values, None) if keep_post_logits else values
    logits = decoder.layer_logits(torch.cat([mid, post]), [*layers, *layers])
    values = iks(logits[: len(layers)], logits[len(layers):], "jsd")
    return (values, logits[len(layers):]) if keep_post_logits else values


# -------------------------------------------------------------------- layers
def candidate_layers(model: ModelAdapter, layers: Sequence[int] | str | None = None) -> list[int]:
    """The fusion candidates: the even blocks of the latter half by default; or a list (or
    a comma-separated string) of block indices, each checked against the model."""
    n = model.n_layers
    if layers is None or layers == "default":
        return [l for l in range(n // 2, n) if l % 2 == 0] or [n - 1]
    if isinstance(layers, str):
        try:
            layers = int_list(layers, empty=True)
        except InterlayerError:
            raise InterlayerError(f"candidate layers {layers!r} must be comma-separated integers") from None
    out = sorted({int(l) for l in layers})
    if not out:
        raise InterlayerError(f"the candidate layer list is empty; give blocks in 0..{n - 1}")
    for layer in out:
        if not 0 <= layer < n:
            raise LayerIndexError(f"candidate layer {layer} is out of range; valid layers are 0..{n - 1}")
    return out


def check_metric(metric: str) -> None:
    if metric not in IKS_METRICS:
        raise InterlayerError(f"unknown IKS metric {metric!r}; valid choices: {', '.join(map(repr, IKS_METRICS))}")


# ------------------------------------------------------------------- results
@dataclass
class IKSResult(Result):
    """IKS per layer over many decoding steps (or examples), and the fusion layers chosen."""

    model: str
    n: int
    """Examples."""
    layers: list[int]
    candidates: list[int]
    values: np.ndarray
    """``[steps, len(layers)]`` IKS of every layer at every recorded step."""
    chosen: list[int]
    """The fusion layer of every recorded step (argmin over the candidates)."""
    metric: str = "jsd"
    select: str = "step"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        """Mean IKS per layer over the recorded steps."""
        return self.values.mean(0)

    @property
    def layer(self) -> int:
        """l*: the candidate with the lowest mean IKS."""
        index = [self.layers.index(c) for c in self.candidates]
        return self.candidates[int(np.argmin(self.mean[index]))]

    @property
    def histogram(self) -> dict[int, int]:
        """How many recorded steps chose each candidate as their fusion layer, ``{layer: count}``
        (every candidate, zeros included).
        """
        counts = Counter(self.chosen)
        return {layer: int(counts.get(layer, 0)) for layer in self.candidates}

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """95% percentile-bootstrap interval of the mean IKS per layer, over the recorded steps."""
        return mean_interval(self.values, bounds=(0.0, math.inf))

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer lens iks --out``; ``iks`` has one mean per layer (all
        layers of the model, in order) with its interval (``iks_low``, ``iks_high``);
        ``values`` and ``chosen`` are the per-step data :meth:`load` rebuilds from."""
        low, high = self.interval()
        return {"model": self.model, "n": self.n, "iks": [float(x) for x in self.mean], "layer": self.layer,
                "iks_low": low.tolist(), "iks_high": high.tolist(), "level": LEVEL,
                "candidates": self.candidates, "selected_histogram": {str(k): v for k, v in self.histogram.items()},
                "metric": self.metric, "select": self.select, "steps": int(self.values.shape[0]),
                "layers": self.layers, "values": encode_array(self.values), "chosen": list(self.chosen), **self.extra}

    _OWN = frozenset({"model", "n", "iks", "layer", "iks_low", "iks_high", "level", "candidates",
                      "selected_histogram", "metric", "select", "steps", "layers", "values", "chosen"})

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "IKSResult":
        """The result :meth:`to_json` described; keys it does not know go back to ``extra``."""
        require(payload, "model", "n", "layers", "candidates", "values", "chosen", what="IKSResult")
        return cls(model=payload["model"], n=int(payload["n"]), layers=[int(x) for x in payload["layers"]],
                   candidates=[int(x) for x in payload["candidates"]], values=decode_array(payload["values"]),
                   chosen=[int(x) for x in payload["chosen"]], metric=payload.get("metric", "jsd"),
                   select=payload.get("select", "step"),
                   extra={k: v for k, v in payload.items() if k not in cls._OWN})

    def headline(self) -> dict[str, Any]:
        """l*, the metric and the counts."""
        star = self.layers.index(self.layer)
        low, high = self.interval()
        return {"model": self.model, "examples": self.n, f"{self.select}s": int(self.values.shape[0]),
                "metric": self.metric, "l*": self.layer,
                "IKS at l*": f"{self.mean[star]:.4f} [{low[star]:.4f}, {high[star]:.4f}]",
                "candidates": self.candidates}

    def to_frame(self) -> pd.DataFrame:
        """Per layer: mean IKS, its 95% interval, the standard deviation over steps, and whether it is a candidate."""
        low, high = self.interval()
        return pd.DataFrame({"layer": self.layers, "iks": self.mean, "iks_low": low, "iks_high": high,
                             "sd": self.values.std(0), "candidate": [l in self.candidates for l in self.layers]})

    def plot(self) -> go.Figure:
        """IKS per layer (candidates shaded, l* marked) and the histogram of per-step choices."""
        fig = make_subplots(rows=1, cols=2, column_widths=[0.65, 0.35],
                            subplot_titles=(f"IKS per layer ({self.metric})", f"fusion layer per {self.select}"))
        for c in self.candidates:
            fig.add_vrect(x0=c - 0.5, x1=c + 0.5, fillcolor="LightGreen", opacity=0.3, line_width=0, row=1, col=1)
        low, high = self.interval()
        fig.add_trace(go.Scatter(x=self.layers, y=self.mean, mode="lines+markers", name="mean IKS (95% interval)",
                                 error_y={"type": "data", "symmetric": False, "array": high - self.mean,
                                          "arrayminus": self.mean - low, "visible": True, "thickness": 1}), 1, 1)
        star = self.layers.index(self.layer)
        fig.add_trace(go.Scatter(x=[self.layer], y=[self.mean[star]], mode="markers", name=f"l* = {self.layer}",
                                 marker={"symbol": "star", "size": 16, "color": "black"}), 1, 1)
        hist = self.histogram
        fig.add_trace(go.Bar(x=[str(k) for k in hist], y=list(hist.values()), name="chosen", showlegend=False), 1, 2)
        fig.update_xaxes(title_text="layer", row=1, col=1)
        fig.update_xaxes(title_text="fusion layer", row=1, col=2)
        fig.update_yaxes(title_text="IKS", row=1, col=1)
        fig.update_yaxes(title_text="count", row=1, col=2)
        fig.update_layout(title=plot_text(f"Internal knowledge score: {self.model} (n={self.n}, "
                                            f"{self.values.shape[0]} {self.select}s)"))
        return fig


# ------------------------------------------------------------------ SimHidden
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def without_answer_sentence(passage: str, answers: Sequence[str]) -> str | None:
    """The passage with every sentence that contains an answer (case-insensitive)
    removed; ``None`` when no sentence contains one."""
    sentences = _SENTENCE.split(passage)
    lowered = [a.lower() for a in answers if a.strip()]
    kept = [s for s in sentences if not any(a in s.lower() for a in lowered)]
    if len(kept) == len(sentences):
        return None
    return " ".join(kept)


@dataclass
class SimHiddenResult(Result):
    """SimHidden per layer: cosine of ``mlp_out.l`` with and without the answer-bearing sentence."""

    model: str
    layers: list[int]
    values: np.ndarray
    """``[examples, layers]``."""
    skipped: int
    """Records whose passage holds no sentence with an answer."""

    @property
    def mean(self) -> np.ndarray:
        """Mean SimHidden cosine per layer over the examples, ``[len(layers)]``."""
        return self.values.mean(0)

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """95% percentile-bootstrap interval of the mean cosine per layer, over examples (within [-1, 1])."""
        return mean_interval(self.values, bounds=(-1.0, 1.0))

    def to_json(self) -> dict[str, Any]:
        """Per-layer means with their 95% intervals, and the per-example ``values``."""
        low, high = self.interval()
        return {"model": self.model, "n": int(self.values.shape[0]), "skipped": self.skipped, "layers": self.layers,
                "sim_hidden": [float(x) for x in self.mean], "sd": [float(x) for x in self.values.std(0)],
                "sim_hidden_low": low.tolist(), "sim_hidden_high": high.tolist(), "level": LEVEL,
                "values": encode_array(self.values)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SimHiddenResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "layers", "values", what="SimHiddenResult")
        return cls(model=payload["model"], layers=[int(x) for x in payload["layers"]],
                   values=decode_array(payload["values"]), skipped=int(payload.get("skipped", 0)))

    def headline(self) -> dict[str, Any]:
        """Counts and the layer of lowest similarity."""
        i = int(np.argmin(self.mean))
        return {"model": self.model, "examples": int(self.values.shape[0]), "skipped": self.skipped,
                "lowest SimHidden": f"{self.mean[i]:.4f} at layer {self.layers[i]}"}

    def to_frame(self) -> pd.DataFrame:
        """Per layer: mean cosine, its 95% interval and the standard deviation over examples."""
        low, high = self.interval()
        return pd.DataFrame({"layer": self.layers, "sim_hidden": self.mean, "sim_hidden_low": low,
                             "sim_hidden_high": high, "sd": self.values.std(0)})

    def plot(self) -> go.Figure:
        """Mean cosine per layer with 95% bootstrap intervals over examples."""
        low, high = self.interval()
        fig = go.Figure(go.Scatter(x=self.layers, y=self.mean, mode="lines+markers", name="SimHidden (95% interval)",
                                   error_y={"type": "data", "symmetric": False, "array": high - self.mean,
                                            "arrayminus": self.mean - low, "visible": True}))
        fig.update_layout(title=plot_text(f"SimHidden: cosine of FFN outputs with vs without the answer sentence "
                                            f"({self.model}, n={self.values.shape[0]})"),
                          xaxis_title="layer", yaxis_title="cos(mlp_out with, mlp_out without)")
        return fig


def sim_hidden(model: ModelAdapter, with_context: Sequence[Any], without_context: Sequence[Any], *,
               skipped: int = 0, batch_size: int = 8, progress: bool = True) -> SimHiddenResult:
    """SimHidden per layer from paired prompts (token ids or text): each prompt with the
    full context and with its answer-bearing sentence removed; the cosine of every
    layer's ``mlp_out`` at the last position."""
    from interlayer.store.collect import collect

    if len(with_context) != len(without_context) or not with_context:
        raise InterlayerError("sim_hidden needs as many prompts without the answer sentence as with it, at least one")
    sites = model.expand_sites("mlp_out.*")
    a = collect(model, list(with_context), sites, select="last", batch_size=batch_size, progress=progress)
    b = collect(model, list(without_context), sites, select="last", batch_size=batch_size, progress=progress)
    layers = [s.layer for s in sites]
    values = torch.stack([torch.nn.functional.cosine_similarity(a[s.name].float(), b[s.name].float(), dim=-1)
                          for s in sites], 1).numpy()
    return SimHiddenResult(model.name, layers, values, skipped)


def __getattr__(name: str) -> Any:
    if name == "SELECTIONS":  # deprecated for one release: the store has its own SELECTIONS
        import warnings

        warnings.warn("interlayer.lens.knowledge.SELECTIONS is renamed FUSION_SELECTIONS", DeprecationWarning,
                      stacklevel=2)
        return FUSION_SELECTIONS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FUSION_SELECTIONS", "IKSResult", "IKS_METRICS", "SimHiddenResult", "candidate_layers",
           "cosine_distance", "iks", "iks_scores", "jsd", "sim_hidden", "without_answer_sentence"]
