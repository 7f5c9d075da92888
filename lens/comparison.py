"""Comparing lenses on held-out token activations: per layer, the mean KL(final || layer)
and the mean next-token cross-entropy (nats) of every lens, the logit lens first (Belrose
et al. 2023, section 4's comparison of the tuned and the logit lens, for any set of
lenses: logit, tuned, Jacobian)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError
from interlayer.intervals import mean_interval
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site
from interlayer.results import Result, require
from interlayer.store.collect import Activations

_LEGACY = ("kl_logit", "kl_tuned", "ce_logit", "ce_tuned")
_DASHES = ("dot", "solid", "dash", "dashdot", "longdash")


@dataclass(init=False)
class LensComparison(Result):
    """Per-layer KL to the final layer (``kl[name]``) and next-token cross-entropy
    (``ce[name]``), nats, of each lens (``lenses``, the logit lens first) on ``n_tokens``
    held-out tokens; ``intervals`` holds each series' 95% bootstrap interval over tokens
    (``{"kl_logit": [[low, high], ...], "ce_jacobian": ...}``).

    Built as ``LensComparison(model, layers, kl={...}, ce={...}, n_tokens=..., intervals=...)``;
    the older form ``LensComparison(model, layers, kl_logit, kl_tuned, ce_logit, ce_tuned,
    n_tokens, intervals)`` still works, and ``kl_logit``, ``ce_tuned``, ... read the series.
    """

    model: str
    layers: list[int]
    kl: dict[str, list[float]]
    ce: dict[str, list[float]]
    n_tokens: int
    intervals: dict[str, list[list[float]]] = field(default_factory=dict)

    def __init__(self, model: str, layers: list[int], *legacy: Any, kl: dict[str, list[float]] | None = None,
                 ce: dict[str, list[float]] | None = None, n_tokens: int = 0,
                 intervals: dict[str, list[list[float]]] | None = None) -> None:
        if legacy:  # (kl_logit, kl_tuned, ce_logit, ce_tuned[, n_tokens[, intervals]])
            if len(legacy) < 4 or kl is not None or ce is not None:
                raise InterlayerError("give LensComparison kl={lens: [...]} and ce={lens: [...]}, or the four "
                                      "series kl_logit, kl_tuned, ce_logit, ce_tuned")
            kl = {"logit": list(legacy[0]), "tuned": list(legacy[1])}
            ce = {"logit": list(legacy[2]), "tuned": list(legacy[3])}
            n_tokens = legacy[4] if len(legacy) > 4 else n_tokens
            intervals = legacy[5] if len(legacy) > 5 else intervals
        self.model, self.layers = model, list(layers)
        self.kl, self.ce = dict(kl or {}), dict(ce or {})
        if list(self.kl) != list(self.ce):
            raise InterlayerError(f"kl and ce must name the same lenses, got {list(self.kl)} and {list(self.ce)}")
        self.n_tokens, self.intervals = int(n_tokens), dict(intervals or {})

    @property
    def lenses(self) -> list[str]:
        """The lens names, in order (the logit lens first)."""
        return list(self.kl)

    def __getattr__(self, name: str) -> Any:
        # kl_<lens> / ce_<lens>: the older field names (kl_logit, kl_tuned, ...), for any lens
        kind, _, lens = name.partition("_")
        series = self.__dict__.get(kind) if kind in ("kl", "ce") else None
        if series is not None and lens in series:
            return series[lens]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def to_frame(self) -> pd.DataFrame:
        """Per layer: ``kl_<lens>`` and ``ce_<lens>`` of each lens, its interval (``*_low``,
        ``*_high``), and each other lens's reduction against the logit lens
        (``kl_reduction_<lens>``; ``kl_reduction``/``ce_reduction`` for the tuned lens)."""
        frame = pd.DataFrame({"layer": self.layers})
        for name in self.lenses:
            frame[f"kl_{name}"], frame[f"ce_{name}"] = self.kl[name], self.ce[name]
        if "logit" in self.kl:
            for name in (n for n in self.lenses if n != "logit"):
                for kind in ("kl", "ce"):
                    frame[f"{kind}_reduction_{name}"] = frame[f"{kind}_logit"] - frame[f"{kind}_{name}"]
            if "tuned" in self.kl:
                frame["kl_reduction"], frame["ce_reduction"] = frame.kl_reduction_tuned, frame.ce_reduction_tuned
        for name, bounds in self.intervals.items():
            frame[f"{name}_low"], frame[f"{name}_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        return frame

    def to_json(self) -> dict[str, Any]:
        """Every field: what :meth:`save` writes."""
        return {"model": self.model, "layers": self.layers, "lenses": self.lenses, "kl": self.kl, "ce": self.ce,
                "n_tokens": self.n_tokens, "intervals": self.intervals}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "LensComparison":
        """The result :meth:`to_json` described (or an older payload with ``kl_logit``, ...)."""
        if "kl" not in payload:
            require(payload, "model", "layers", *_LEGACY, "n_tokens", what="LensComparison")
            return cls(payload["model"], [int(x) for x in payload["layers"]], *(list(payload[k]) for k in _LEGACY),
                       int(payload["n_tokens"]), dict(payload.get("intervals", {})))
        require(payload, "model", "layers", "kl", "ce", "n_tokens", what="LensComparison")
        return cls(payload["model"], [int(x) for x in payload["layers"]], kl=dict(payload["kl"]),
                   ce=dict(payload["ce"]), n_tokens=int(payload["n_tokens"]),
                   intervals=dict(payload.get("intervals", {})))

    def headline(self) -> dict[str, Any]:
        """Tokens and the mean KL of each lens over the layers."""
        means = {f"mean KL, {name} lens (nats)": sum(v) / len(v) for name, v in self.kl.items() if v}
        return {"model": self.model, "tokens": self.n_tokens, "layers": len(self.layers), **means}

    def plot(self) -> go.Figure:
        """KL and CE by layer for every lens, with 95% bootstrap intervals over tokens."""
        fig = go.Figure()
        for kind, label in (("kl", "KL"), ("ce", "CE")):
            for index, name in enumerate(self.lenses):
                key, values = f"{kind}_{name}", getattr(self, kind)[name]
                error = None
                if key in self.intervals:
                    error = {"type": "data", "symmetric": False,
                             "array": [b[1] - v for b, v in zip(self.intervals[key], values)],
                             "arrayminus": [v - b[0] for b, v in zip(self.intervals[key], values)]}
                fig.add_trace(go.Scatter(x=self.layers, y=values, name=f"{label} {name} lens", error_y=error,
                                         line={"dash": _DASHES[index % len(_DASHES)]}))
        fig.update_layout(title=f"{', '.join(self.lenses)} lenses on held-out text ({self.n_tokens} tokens)",
                          xaxis_title="layer", yaxis_title="nats")
        return fig


def stacked_resid(acts: Activations, n_layers: int) -> torch.Tensor:
    """``[n_layers, rows, d]``: resid_post of every layer from collected activations."""
    names = [Site(l, "resid_post").name for l in range(n_layers)]
    missing = [l for l, name in zip(range(n_layers), names) if name not in acts.tensors]
    if missing:
        raise InterlayerError(f"the activations lack resid_post at layers {missing}; collect 'resid_post.*'")
    return acts.stack(names)


def _lens_list(lens: Lens | Sequence[Lens]) -> list[Lens]:
    """The logit lens, then ``lens`` (one lens or several), names unique."""
    given = [lens] if isinstance(lens, Lens) else list(lens)
    lenses = [LOGIT_LENS, *(l for l in given if l.name != "logit")]
    names = [l.name for l in lenses]
    if len(set(names)) != len(names):
        raise InterlayerError(f"compare_lenses needs lenses with distinct names, got {names}")
    bad = [type(l).__name__ for l in lenses if not isinstance(l, Lens)]
    if bad:
        raise InterlayerError(f"compare_lenses takes lenses (a name and transform(hidden, layer)), got {bad}")
    return lenses


def compare_lenses(model: ModelAdapter, lens: Lens | Sequence[Lens], acts: Activations, memory_mb: float = 256.0,
                   layers: list[int] | None = None) -> LensComparison:
    """Evaluate the logit lens and ``lens`` (a tuned lens, a Jacobian lens, or a list of
    lenses) on held-out token activations (resid_post of every layer): mean KL(final ||
    layer) and mean next-token CE, at every layer or at ``layers``."""
    lenses = _lens_list(lens)
    stacked = stacked_resid(acts, model.n_layers)
    targets, has_next = acts.next_tokens()
    layers = list(range(model.n_layers)) if layers is None else [model.check_layer(l) for l in layers]
    hidden = stacked[layers]
    kl: dict[str, list[float]] = {}
    ce: dict[str, list[float]] = {}
    intervals: dict[str, list[list[float]]] = {}
    for one in lenses:
        # KL and the next-token loss from one decoding (its target log-probabilities are
        # LayerDecoder's own, as next_token_nll's): decoding twice would double the head's work
        out = LayerDecoder(model, memory_mb, lens=one).decode(hidden, reference=stacked[-1], targets=targets,
                                                               layers=layers)
        nll = -out.target_logprobs[:, has_next]
        kl[one.name], ce[one.name] = out.kl_to_final.mean(-1).tolist(), nll.mean(-1).tolist()
        for series, per_token in ((f"kl_{one.name}", out.kl_to_final), (f"ce_{one.name}", nll)):
            low, high = mean_interval(per_token.double().numpy().T, bounds=(0.0, math.inf), n_resamples=500)
            intervals[series] = [[float(a), float(b)] for a, b in zip(low, high)]
    return LensComparison(model.name, layers, kl=kl, ce=ce, n_tokens=int(hidden.shape[1]), intervals=intervals)
