"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT").

For each fact the subject's tokens are corrupted with Gaussian noise at the embeddings
(``noise`` x the subjects' embedding standard deviation, ``samples`` seeded draws), and
the probability of the true answer's first token is read at the last position: clean,
corrupted, and corrupted with one clean state restored. The restored states are the
residual stream at each (layer, position) (``kind="resid"``: block ``l``'s output) and,
as ROME does, the MLP or attention outputs of a window of ``window`` layers centred on
``l`` (``"mlp"``, ``"attn"``). The indirect effect of a state is its restored
probability minus the corrupted one.

Everything runs through the store's activation patching
(:mod:`interlayer.store.patching`): one store call per fact, every restoration resuming
from the corrupted prefix. Positions before the first subject token are the same in the
clean and the corrupted run, so their restorations are the corrupted probability
without a pass.

ROME's code keeps only facts the model knows (its top prediction on the clean prompt is
the answer's first token); ``known_only=True`` does the same and is the default. The
averages over facts are by ROME's six token groups, with bootstrap intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError, choices
from interlayer.intervals import mean_interval
from interlayer.model.adapter import ModelAdapter
from interlayer.progress import tqdm
from interlayer.results import Result
from interlayer.store.patching import EMBED_SITE, EmbeddingNoise, embedding_std, patch_grid, record, target_probability

from .facts import Fact, subject_positions

KINDS: dict[str, str] = {"resid": "resid_post", "mlp": "mlp_out", "attn": "attn_out"}
"""The traced kinds and the site each restores."""

POSITIONS = ("all", "key")
"""Which positions are restored: ``all`` (ROME) or ``key``, the :data:`KEY_GROUPS` only."""
KEY_GROUPS = ("first subject token", "last subject token", "last token")
"""The token groups ``positions="key"`` restores: where ROME's early and late sites are."""

TOKEN_GROUPS = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
                "further tokens", "last token")
"""ROME's token groups (its Figure 2)."""


def window_layers(layer: int, n_layers: int, window: int) -> list[int]:
    """ROME's window around ``layer``: ``max(0, l - w // 2) .. min(L, l - (-w // 2)) - 1``."""
    return list(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def site_groups(n_layers: int, kind: str, window: int) -> list[tuple[str, ...]]:
    """The sites restored together for each layer of ``kind``."""
    if kind not in KINDS:
        raise InterlayerError(f"unknown kind {kind!r}; valid choices: {choices(KINDS)}")
    site = KINDS[kind]
    if kind == "resid":
        return [(f"{site}.{l}",) for l in range(n_layers)]
    return [tuple(f"{site}.{j}" for j in window_layers(l, n_layers, window)) for l in range(n_layers)]


def token_groups(n_tokens: int, subject: Sequence[int]) -> dict[str, list[int]]:
    """The positions of each of :data:`TOKEN_GROUPS` (empty where a group has none)."""
    first, last = min(subject), max(subject)
    after = list(range(last + 1, n_tokens - 1))
    return {"first subject token": [first], "middle subject tokens": list(range(first + 1, last)),
            "last subject token": [last], "first subsequent token": after[:1], "further tokens": after[1:],
            "last token": [n_tokens - 1]}


def restored_positions(n_tokens: int, subject: Sequence[int], positions: str = "all") -> list[int]:
    """The positions a trace restores: every one, or (``"key"``) those of :data:`KEY_GROUPS`."""
    if positions not in POSITIONS:
        raise InterlayerError(f"unknown positions {positions!r}; valid choices: {choices(POSITIONS)}")
    if positions == "all":
        return list(range(n_tokens))
    groups = token_groups(n_tokens, subject)
    return sorted({p for name in KEY_GROUPS for p in groups[name]})


@dataclass
class FactTrace:
    """One fact's trace. ``scores[kind]`` is ``[n_layers, n_tokens]``: the answer's
    probability with that state restored."""

    fact: Fact
    tokens: list[str]
    subject: list[int]
    target_id: int
    clean: float
    corrupted: float
    known: bool
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    def effects(self, kind: str) -> np.ndarray:
        """``[len(TOKEN_GROUPS), n_layers]`` indirect effects averaged within each group (NaN: empty group)."""
        groups = token_groups(len(self.tokens), self.subject)
        ie = self.scores[kind] - self.corrupted
        return np.stack([ie[:, g].mean(1) if g else np.full(ie.shape[0], np.nan) for g in groups.values()])

    def to_json(self) -> dict[str, Any]:
        """The trace as JSON: the fact, its tokens, the probabilities and every score."""
        return {"prompt": self.fact.prompt, "subject": self.fact.subject, "target": self.fact.target,
                "tokens": self.tokens, "subject_positions": self.subject, "target_id": self.target_id,
                "clean": self.clean, "corrupted": self.corrupted, "known": self.known,
                "scores": {k: [[None if np.isnan(x) else float(x) for x in row] for row in v] for k, v in self.scores.items()}}

    @classmethod
    def from_json(cls, p: dict[str, Any]) -> "FactTrace":
        """The trace :meth:`to_json` wrote."""
        return cls(Fact(p["prompt"], p["subject"], p["target"]), p["tokens"], p["subject_positions"], p["target_id"],
                   p["clean"], p["corrupted"], p["known"],
                   {k: np.array(v, dtype=np.float64) for k, v in p["scores"].items()})


def trace_fact(model: ModelAdapter, fact: Fact, *, std: float, kinds: Sequence[str] = ("resid",), window: int = 10,
               samples: int = 10, seed: int = 0, skip_unknown: bool = False, positions: str = "all") -> FactTrace:
    """Trace one fact (noise of standard deviation ``std`` at the subject's tokens);
    ``skip_unknown``: a fact the model does not know gets its clean run only (no scores);
    ``positions="key"`` restores the :data:`KEY_GROUPS` only (the others' scores are NaN)."""
    ids, subject, target = subject_positions(model, fact)
    groups = [g for kind in kinds for g in site_groups(model.n_layers, kind, window)]
    sites = sorted({s for g in groups for s in g}, key=lambda s: model.site(s).order)
    clean = record(model, ids, [*sites, "ln_final"])
    clean_p = float(target_probability(model, clean["ln_final"][-1], target))
    known = int(LayerDecoder(model).from_normed(clean["ln_final"][-1:]).argmax(-1)) == target
    tokens = [model.tokenizer.decode([i]) for i in ids]
    if skip_unknown and not known:
        return FactTrace(fact, tokens, subject, target, clean_p, float("nan"), False)
    noise = EmbeddingNoise(tuple(subject), std, samples, seed)
    where = restored_positions(len(ids), subject, positions)
    grid = patch_grid(model, ids, clean, groups, where, target,
                      corruption={EMBED_SITE: noise.edit(model.d_model)}, rows=samples, first_changed=min(subject))
    scores, start = {}, 0
    for kind in kinds:
        full = np.full((model.n_layers, len(ids)), np.nan)
        full[:, where] = grid.probability[start:start + model.n_layers].numpy()
        scores[kind] = full
        start += model.n_layers
    return FactTrace(fact, tokens, subject, target, clean_p, grid.base, bool(known), scores)


@dataclass
class CausalTrace(Result):
    """Causal traces of several facts, and their averages by token group."""

    model: str
    n_layers: int
    kinds: list[str]
    window: int
    noise: float
    std: float
    samples: int
    seed: int
    known_only: bool
    scanned: int
    facts: list[FactTrace]
    positions: str = "all"
    """``all`` or ``key`` (:data:`POSITIONS`)."""

    @property
    def group_names(self) -> tuple[str, ...]:
        """The token groups the averages are over (:data:`TOKEN_GROUPS`)."""
        return TOKEN_GROUPS

    def effects(self, kind: str) -> np.ndarray:
        """``[n_facts, len(TOKEN_GROUPS), n_layers]`` indirect effects."""
        if not self.facts:
            raise InterlayerError("no fact was traced (with known_only, none the model knows)")
        return np.stack([f.effects(kind) for f in self.facts])

    def summary(self, kind: str) -> "Any":
        """A pandas frame: group, layer, mean indirect effect and its bootstrap interval."""
        import pandas as pd

        data = self.effects(kind)
        rows = []
        for g, name in enumerate(TOKEN_GROUPS):
            low, high = mean_interval(data[:, g, :], seed=self.seed)
            mean = np.nanmean(data[:, g, :], 0) if np.isfinite(data[:, g, :]).any() else np.full(self.n_layers, np.nan)
            rows += [{"kind": kind, "group": name, "layer": l, "effect": float(mean[l]), "low": float(low[l]),
                      "high": float(high[l])} for l in range(self.n_layers)]
        return pd.DataFrame(rows)

    def band(self, kind: str) -> dict[str, Any]:
        """Where restoring the last subject token recovers most: the peak layer of its mean
        indirect effect and the contiguous layers around it at half the peak or more."""
        mean = np.nanmean(self.effects(kind)[:, TOKEN_GROUPS.index("last subject token"), :], 0)
        peak = int(np.nanargmax(mean))
        lo = hi = peak
        while lo > 0 and mean[lo - 1] >= mean[peak] / 2:
            lo -= 1
        while hi < self.n_layers - 1 and mean[hi + 1] >= mean[peak] / 2:
            hi += 1
        return {"kind": kind, "peak_layer": peak, "peak_effect": float(mean[peak]), "first": lo, "last": hi}

    def to_json(self) -> dict[str, Any]:
        """The settings, the bands of every kind and every fact's trace (what ``--out`` writes)."""
        payload = {k: getattr(self, k) for k in ("model", "n_layers", "kinds", "window", "noise", "std", "samples",
                                                  "seed", "known_only", "scanned", "positions")}
        payload["n_facts"] = len(self.facts)
        payload["bands"] = [self.band(k) for k in self.kinds] if self.facts else []
        payload["facts"] = [f.to_json() for f in self.facts]
        return payload

    @classmethod
    def from_json(cls, p: dict[str, Any]) -> "CausalTrace":
        """The result :meth:`to_json` (or ``interlayer trace --out``) wrote."""
        return cls(p["model"], p["n_layers"], p["kinds"], p["window"], p["noise"], p["std"], p["samples"], p["seed"],
                   p["known_only"], p["scanned"], [FactTrace.from_json(f) for f in p["facts"]], p.get("positions", "all"))

    def to_frame(self) -> "Any":
        """:meth:`summary` of every kind, one frame."""
        import pandas as pd

        return pd.concat([self.summary(k) for k in self.kinds], ignore_index=True)

    def plot(self) -> "Any":
        """Heatmaps of the mean indirect effect, token group x layer, one per kind."""
        from .plots import trace_heatmaps

        return trace_heatmaps(self)


def causal_trace(model: ModelAdapter, facts: Sequence[Fact], *, n: int | None = None,
                 kinds: Sequence[str] = ("resid", "mlp", "attn"), window: int = 10, noise: float = 3.0,
                 std: float | None = None, samples: int = 10, seed: int = 0, known_only: bool = True,
                 positions: str = "all", progress: bool = True) -> CausalTrace:
    """Trace ``facts`` (the first ``n`` the model knows with ``known_only``, else the
    first ``n``). The noise's standard deviation is ``std``, by default ``noise`` x
    :func:`~interlayer.store.patching.embedding_std` of the facts' subjects.
    ``positions="key"`` restores only the first and last subject token and the last token
    (:data:`KEY_GROUPS`), about a third of ROME's passes on a short prompt."""
    for kind in kinds:
        site_groups(1, kind, window)  # an unknown kind fails before any pass
    restored_positions(1, [0], positions)
    if window < 1 or samples < 1 or not noise > 0:
        raise InterlayerError(f"window and samples must be at least 1 and noise positive; got {window}, {samples}, {noise}")
    if std is None:
        std = noise * embedding_std(model, [f.subject for f in facts])
    traced: list[FactTrace] = []
    want = n if n is not None else len(facts)
    scanned = 0
    bar = tqdm(total=want, unit="fact", disable=not progress, desc="trace")
    try:
        for fact in facts:
            if len(traced) == want:
                break
            scanned += 1
            trace = trace_fact(model, fact, std=std, kinds=kinds, window=window, samples=samples, seed=seed,
                               skip_unknown=known_only, positions=positions)
            if trace.known or not known_only:
                traced.append(trace)
                bar.update(1)
    finally:
        bar.close()
    return CausalTrace(model.name, model.n_layers, list(kinds), window, noise, float(std), samples, seed, known_only,
                       scanned, traced, positions)


__all__ = ["CausalTrace", "FactTrace", "KEY_GROUPS", "KINDS", "POSITIONS", "TOKEN_GROUPS", "restored_positions", "causal_trace", "site_groups", "token_groups",
           "trace_fact", "window_layers"]
