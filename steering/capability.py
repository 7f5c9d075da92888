"""What steering costs, measured within one run (the seed paper's protocol: every metric
steered and unsteered, same data, same decoding, reported as a difference), and the
paper's strength calibration.

* **Multiple choice**: SWAG continuations (packaged subset): each ending scored by its
  mean token log-probability after the start phrase; accuracy = argmax is the gold one.
* **Fluency** of steered generations: greedy continuations of neutral prompts, steered,
  scored by their perplexity under the *unsteered* model; ``fluency = min(1, ppl_plain /
  ppl_steered)`` with the unsteered model's own continuations as ``ppl_plain`` (1 = as
  fluent as unsteered). This is this project's reading of the paper's fluency score.
* **Stability** (Handa et al. 2025): each Δ normalised by its benchmark's range;
  consistency = 1 / (1 + Var(Δ)), disruption = 1 / (1 + mean |Δ|), stability = their product.
* **Calibration**: the paper searches the strength maximising trait shift subject to
  fluency >= 0.9; :func:`calibrate_strength` does it on a grid, then once more between the best
  grid point's neighbours.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.io.json_records import json_lines
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import LN_FINAL
from interlayer.prompts import ChatMode
from interlayer.store.collect import collect
from interlayer.intervals import mean_interval
from interlayer.results import Result, require

from .datasets import ContrastPair, load_pairs
from .evaluation import answer_prompts, generate_text, p_matching, p_matching_variants
from .inject import steer
from .vectors import SteeringVector

NEUTRAL_PROMPTS = ("The weather today is", "My favourite book is about", "In the morning I usually",
                   "The city is known for", "Here is a short story:", "The most important thing about cooking is")


def load_swag(n: int | None = 100) -> list[dict[str, Any]]:
    """The packaged SWAG subset: ``{"startphrase", "choices", "answer"}`` items."""
    text = resources.files("interlayer.steering").joinpath("data/swag.jsonl").read_text(encoding="utf-8")
    items = [item for _, item in json_lines(text.splitlines(), "swag.jsonl")]
    return items[:n]


def choice_accuracy(model: ModelAdapter, items: Sequence[dict[str, Any]], edits: dict[str, Any] | None = None,
                    batch_size: int = 8) -> float:
    """Multiple-choice accuracy: each ending's mean log-probability after its start phrase,
    one store pass over every (start, ending) text."""
    tok = model.tokenizer
    texts, positions, targets, owner = [], [], [], []
    for q, item in enumerate(items):
        start = list(tok(item["startphrase"]).input_ids)
        for choice in item["choices"]:
            ids = list(tok(item["startphrase"] + " " + choice).input_ids)
            k = min(len(start), len(ids) - 1)
            texts.append(ids)
            positions.append(list(range(k - 1, len(ids) - 1)))  # each predicts the next ending token
            targets.append(ids[k:])
            owner.append(q)
    acts = collect(model, texts, [LN_FINAL], select="positions", positions=positions, edits=edits,
                   batch_size=batch_size, progress=False)
    flat = torch.tensor([t for row in targets for t in row])
    picked = -_nll(model, acts[LN_FINAL], flat)  # log p(ending token), float64
    seq = acts.meta["sequence"]
    scores = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, seq, picked)
    scores /= torch.bincount(seq, minlength=len(texts)).clamp_min(1)
    correct, start = 0, 0
    for q, item in enumerate(items):
        n = len(item["choices"])
        correct += int(int(scores[start:start + n].argmax()) == int(item["answer"]))
        start += n
    return correct / len(items)


def text_perplexity(model: ModelAdapter, texts: Sequence[str], prompts: Sequence[str]) -> float:
    """Perplexity of the continuations ``texts`` after ``prompts`` under the model as it
    is now (attach no steering to score with the unsteered model)."""
    tok = model.tokenizer
    ids, positions, targets = [], [], []
    for prompt, text in zip(prompts, texts):
        start = list(tok(prompt).input_ids)
        full = list(tok(prompt + text).input_ids)
        if len(full) <= len(start):
            continue
        ids.append(full)
        positions.append(list(range(len(start) - 1, len(full) - 1)))
        targets.extend(full[len(start):])
    if not ids:
        raise InterlayerError("the generations are empty; nothing to score")
    acts = collect(model, ids, [LN_FINAL], select="positions", positions=positions, progress=False)
    ce = _nll(model, acts[LN_FINAL], torch.tensor(targets))
    return math.exp(float(ce.mean()))


def _nll(model: ModelAdapter, normed: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """float64 ``-log p(target)`` of final-norm rows, through the layer decoder's head (the
    log-softmax in double precision, as these scores always were)."""
    return LayerDecoder(model).next_token_nll(normed, targets, normed=True, dtype=torch.float64)


def plain_fluency_baseline(model: ModelAdapter, prompts: Sequence[str] = NEUTRAL_PROMPTS,
                           max_new_tokens: int = 24) -> float:
    """Perplexity of the unsteered model's own greedy continuations: fluency's reference."""
    return text_perplexity(model, [generate_text(model, p, max_new_tokens) for p in prompts], prompts)


def fluency(model: ModelAdapter, vector: SteeringVector, coef: float, layers: Sequence[int] | None = None, *,
            prompts: Sequence[str] = NEUTRAL_PROMPTS, max_new_tokens: int = 24,
            baseline: float | None = None) -> dict[str, float]:
    """Fluency of steered greedy generations (module docstring): the perplexities of the
    plain and steered continuations under the unsteered model, and their ratio, capped at 1.
    ``baseline``: the plain perplexity when already known (:func:`plain_fluency_baseline`)."""
    ppl_plain = baseline if baseline is not None else plain_fluency_baseline(model, prompts, max_new_tokens)
    with steer(model, vector, coef, layers=layers):
        steered = [generate_text(model, p, max_new_tokens) for p in prompts]
    ppl_steered = text_perplexity(model, steered, prompts)
    return {"ppl_plain": ppl_plain, "ppl_steered": ppl_steered, "fluency": min(1.0, ppl_plain / ppl_steered)}


def capability_cost(model: ModelAdapter, vector: SteeringVector, coef: float, layers: Sequence[int] | None = None, *,
                    text: Any = None, perplexity_tokens: int = 512, swag: int = 100) -> dict[str, float]:
    """Within-run capability deltas of one steering setting: perplexity of held-out text,
    SWAG accuracy and fluency, steered minus unsteered, and the stability score over the
    two benchmark deltas (perplexity normalised by the unsteered perplexity, accuracy by 1)."""
    from interlayer.model.loading import SAMPLE_TEXT

    from .evaluation import perplexities

    text = text if text is not None else str(SAMPLE_TEXT)
    edits = steer(model, vector, coef, layers=layers).edits()
    items = load_swag(swag)
    ppl0, ppl1 = perplexities(model, text, [{}, edits], tokens=perplexity_tokens)
    acc0, acc1 = choice_accuracy(model, items), choice_accuracy(model, items, edits)
    flu = fluency(model, vector, coef, layers)
    out = {"perplexity": ppl0, "delta_perplexity": ppl1 - ppl0, "accuracy": acc0, "delta_accuracy": acc1 - acc0,
           "fluency": flu["fluency"], "swag_items": len(items)}
    out.update(stability([out["delta_perplexity"], out["delta_accuracy"]], [ppl0, 1.0]))
    return out


def stability(deltas: Sequence[float], ranges: Sequence[float]) -> dict[str, float]:
    """Consistency, disruption and stability of capability deltas (module docstring)."""
    if len(deltas) != len(ranges) or not deltas:
        raise InterlayerError("give one range per delta, and at least one delta")
    normed = np.array([d / r for d, r in zip(deltas, ranges)], dtype=float)
    consistency = 1.0 / (1.0 + float(normed.var()))
    disruption = 1.0 / (1.0 + float(np.abs(normed).mean()))
    return {"consistency": consistency, "disruption": disruption, "stability": consistency * disruption}


@dataclass
class Calibration(Result):
    """The strengths tried, their shift in P(matching) (with its 95% bootstrap interval
    over prompts, ``shift_ci``) and fluency, and the one chosen."""

    layer: int
    strengths: list[float]
    shift: list[float]
    fluency: list[float]
    bound: float
    chosen: float
    shift_ci: list[list[float]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One row per strength tried: shift (and its interval when known) and fluency."""
        frame = pd.DataFrame({"strength": self.strengths, "shift": self.shift, "fluency": self.fluency})
        if self.shift_ci:
            frame["shift_low"], frame["shift_high"] = [b[0] for b in self.shift_ci], [b[1] for b in self.shift_ci]
        frame["chosen"] = [s == self.chosen for s in self.strengths]
        return frame

    def to_json(self) -> dict[str, Any]:
        """Every field: what :meth:`save` writes."""
        return {"layer": self.layer, "strengths": self.strengths, "shift": self.shift, "fluency": self.fluency,
                "bound": self.bound, "chosen": self.chosen, "shift_ci": self.shift_ci}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Calibration":
        """The result :meth:`to_json` described."""
        require(payload, "layer", "strengths", "shift", "fluency", "bound", "chosen", what="Calibration")
        return cls(int(payload["layer"]), [float(v) for v in payload["strengths"]], [float(v) for v in payload["shift"]],
                   [float(v) for v in payload["fluency"]], float(payload["bound"]), float(payload["chosen"]),
                   [list(map(float, b)) for b in payload.get("shift_ci", [])])

    def headline(self) -> dict[str, Any]:
        """The layer, the bound and the chosen strength with its shift and fluency."""
        out: dict[str, Any] = {"layer": self.layer, "fluency bound": self.bound, "strengths tried": len(self.strengths),
                               "chosen strength": self.chosen}
        if self.chosen in self.strengths:
            i = self.strengths.index(self.chosen)
            out["shift there"], out["fluency there"] = self.shift[i], self.fluency[i]
        return out

    def plot(self) -> go.Figure:
        """Shift in P(matching) (95% intervals) and fluency against the strength; the bound dotted."""
        frame = self.to_frame()
        error = None
        if self.shift_ci:
            error = {"type": "data", "symmetric": False, "array": frame.shift_high - frame["shift"],
                     "arrayminus": frame["shift"] - frame.shift_low}
        fig = go.Figure([go.Scatter(x=frame.strength, y=frame["shift"], mode="lines+markers", name="shift in P(matching)",
                                    error_y=error),
                         go.Scatter(x=frame.strength, y=frame.fluency, mode="lines+markers", name="fluency")])
        fig.add_hline(y=self.bound, line_dash="dot", annotation_text="fluency bound")
        fig.add_vline(x=self.chosen, line_dash="dash", annotation_text=f"chosen {self.chosen:g}")
        fig.update_layout(title=f"Steering strength calibration at layer {self.layer}", xaxis_title="strength")
        return fig


def calibrate_strength(model: ModelAdapter, vector: SteeringVector, dataset: str | Sequence[ContrastPair], layer: int, *,
                       strengths: Sequence[float] = (-8, -4, -2, -1, 1, 2, 4, 8), bound: float = 0.9,
                       n: int | None = 50, chat: ChatMode | bool = "no", batch_size: int = 8) -> Calibration:
    """The strength with the largest shift in P(matching) whose fluency stays at or above
    ``bound`` (Handa et al. 2025 search [-300, 300] on Gemma-2-2B with fluency >= 0.9). A grid
    first, then the midpoints next to the best admissible grid point."""
    vector[layer]
    pairs = load_pairs(dataset, "test", n) if isinstance(dataset, str) else list(dataset)[:n]
    prompts = answer_prompts(model, pairs, chat)
    reference = plain_fluency_baseline(model)
    tried: dict[float, tuple[float, float]] = {}
    bands: dict[float, list[float]] = {}
    grid = sorted(float(s) for s in strengths)
    # the grid's shifts in one store pass (clean prefix shared); fluency needs generation
    edits = [steer(model, vector, s, layers=[layer]).edits() for s in grid]
    base, *steered = p_matching_variants(model, prompts, [{}, *edits], batch_size)

    def measure(strength: float, probs: np.ndarray | None = None) -> tuple[float, float]:
        if strength not in tried:
            if probs is None:
                probs = p_matching(model, prompts, steer(model, vector, strength, layers=[layer]).edits(), batch_size)
            shift = float(np.mean(probs - base))
            low, high = mean_interval(np.asarray(probs - base, dtype=float), bounds=(-1.0, 1.0))
            bands[strength] = [float(low), float(high)]
            tried[strength] = (shift, fluency(model, vector, strength, [layer], baseline=reference)["fluency"])
        return tried[strength]

    for s, probs in zip(grid, steered):
        measure(s, probs)

    def best_admissible() -> float | None:
        ok = [s for s, (_, f) in tried.items() if f >= bound]
        return max(ok, key=lambda s: tried[s][0]) if ok else None

    best = best_admissible()
    if best is not None:
        i = grid.index(best) if best in grid else None
        for j in ((i - 1, i + 1) if i is not None else ()):
            if 0 <= j < len(grid):
                measure((best + grid[j]) / 2)
        best = best_admissible()
    chosen = best if best is not None else 0.0
    order = sorted(tried)
    return Calibration(layer, order, [tried[s][0] for s in order], [tried[s][1] for s in order], bound, chosen,
                       [bands[s] for s in order])


def calibrate(*args: Any, **kwargs: Any) -> Calibration:
    """Deprecated name of :func:`calibrate_strength` (one release; it clashed with the probes' calibration)."""
    warnings.warn("interlayer.steering.calibrate is renamed calibrate_strength", DeprecationWarning, stacklevel=2)
    return calibrate_strength(*args, **kwargs)
