"""Does a steering vector move behaviour, and what does it cost? All passes go through
the activation store with the steering as edits: one batched pass per batch of prompts
per cell, and for many cells :func:`interlayer.stream_variants`, which runs each batch's
clean prefix once and each cell only from its layer on.

* **Behaviour**: each A/B (or Yes/No) item is scored where its two answers first differ:
  the prompt is the question followed by the answers' shared start, and
  ``P(matching) = softmax(z_matching, z_not)[0]`` over the two answer tokens at the last
  position. The shift is ``mean_i P_steered(matching) - mean_i P_unsteered(matching)``.
* **Random baseline**: at every cell, a random direction (seeded per layer) of the same
  norm as the vector's, with the same coefficient.
* **Capability cost** (within-run Δ, the seed paper's protocol): perplexity of held-out
  text, ``exp(mean next-token CE)``, steered minus unsteered, in the same run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interlayer.store import contexts_for_tokens
from interlayer.store.collect import stream_variants
from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.generation import generate_texts
from interlayer.intervals import mean_interval
from interlayer.results import Result, require
from interlayer.io.seeding import epoch_seed
from interlayer.model.sites import LN_FINAL
from interlayer.options import CONTEXT_LENGTH
from interlayer.prompts import ChatMode, use_chat
from interlayer.plot_text import plot_text

from .datasets import ContrastPair, load_pairs
from .inject import steer
from .vector_file import SteeringVector
from .vectors import _asked, _joined, encode


@dataclass
class AnswerPrompts:
    """The scored prompts of a set of contrast pairs."""

    prompts: list[list[int]]
    """Token ids: the question and the answers' shared start (e.g. ``" ("``)."""
    matching: list[int]
    """The first token where the matching answer differs."""
    not_matching: list[int]


def answer_prompts(model: ModelAdapter, pairs: Sequence[ContrastPair], chat: ChatMode | bool = "no") -> AnswerPrompts:
    """Where each pair's two answers part: the shared prefix of question + answer, and the
    first token of each answer after it (``chat``, :func:`interlayer.prompts.use_chat`:
    whether the question is asked through the chat template)."""
    templated = use_chat(model, chat)
    prompts, matching, other = [], [], []
    for number, pair in enumerate(pairs):
        prompt = _asked(model, pair.question, templated)
        a = encode(model, prompt + _joined(pair.matching, templated), templated)
        b = encode(model, prompt + _joined(pair.not_matching, templated), templated)
        shared = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        if shared >= min(len(a), len(b)) or shared == 0:
            raise InterlayerError(f"pair {number}: one answer is a prefix of the other ({pair.matching!r}, "
                                  f"{pair.not_matching!r}); they cannot be told apart by one token")
        prompts.append(a[:shared])
        matching.append(a[shared])
        other.append(b[shared])
    return AnswerPrompts(prompts, matching, other)


def p_matching(model: ModelAdapter, prompts: AnswerPrompts, edits: dict[str, Any] | None = None,
               batch_size: int = 8) -> np.ndarray:
    """``[n]`` P(matching) over the two answer tokens, with optional store edits."""
    return p_matching_variants(model, prompts, [edits], batch_size)[0]


def p_matching_variants(model: ModelAdapter, prompts: AnswerPrompts, variants: Sequence[dict[str, Any] | None],
                        batch_size: int = 8, progress: bool = False) -> list[np.ndarray]:
    """:func:`p_matching` under several edits at once (one entry per variant), through
    :func:`interlayer.stream_variants`: each batch's clean prefix runs once, and each
    variant only the blocks from its first edit on."""
    n = len(prompts.prompts)
    out = [np.zeros(n) for _ in variants]
    matching, other = torch.tensor(prompts.matching), torch.tensor(prompts.not_matching)
    decoder = LayerDecoder(model)
    for chunks in stream_variants(model, prompts.prompts, LN_FINAL, variants, select="last", batch_size=batch_size,
                                  progress=progress):
        for probs, acts in zip(out, chunks):
            seq = acts.meta["sequence"]
            logits = decoder.from_normed(acts[LN_FINAL]).cpu()
            rows = torch.arange(len(seq))
            pair = torch.stack([logits[rows, matching[seq]], logits[rows, other[seq]]], -1).double()
            probs[seq.numpy()] = torch.softmax(pair, -1)[:, 0].numpy()
    return out


def perplexity(model: ModelAdapter, text: Any, edits: dict[str, Any] | None = None, *, tokens: int = 512,
               context_length: int = CONTEXT_LENGTH, batch_size: int = 4) -> float:
    """``exp`` of the mean next-token cross-entropy over ``tokens`` tokens of ``text``
    (packed contexts), streamed chunk by chunk, with optional store edits."""
    return perplexities(model, text, [edits], tokens=tokens, context_length=context_length, batch_size=batch_size)[0]


def perplexities(model: ModelAdapter, text: Any, variants: Sequence[dict[str, Any] | None], *, tokens: int = 512,
                 context_length: int = CONTEXT_LENGTH, batch_size: int = 4, rows_per_step: int | None = None) -> list[float]:
    """:func:`perplexity` under several edits at once, sharing each batch's clean prefix
    (:func:`interlayer.stream_variants`). The store keeps the final-norm outputs; the layer
    decoder scores them (:meth:`interlayer.LayerDecoder.next_token_nll`, float32) a chunk
    of rows at a time, so memory stays small at any vocabulary size. ``rows_per_step`` is
    no longer used (the decoder sizes its chunks); it is accepted for one release."""
    if rows_per_step is not None:
        warnings.warn("perplexities(rows_per_step=) is no longer used: the layer decoder sizes its chunks",
                      DeprecationWarning, stacklevel=2)
    context_length = min(context_length, model.max_positions)
    limit = contexts_for_tokens(model, tokens, context_length)
    total, count = np.zeros(len(variants)), 0
    decoder = LayerDecoder(model)
    for chunks in stream_variants(model, text, LN_FINAL, variants, context_length=context_length, limit=limit,
                                  batch_size=batch_size, progress=False):
        targets, has_next = chunks[0].next_tokens()
        count += int(has_next.sum())
        for v, acts in enumerate(chunks):
            nll = decoder.next_token_nll(acts[LN_FINAL], targets, normed=True, mask=has_next)
            total[v] += float(nll[has_next].double().sum())
    if count == 0:
        raise InterlayerError("the perplexity text produced no tokens")
    return [math.exp(t / count) for t in total]


def check_perplexity_tokens(model: ModelAdapter, text: Any, tokens: int, context_length: int = CONTEXT_LENGTH,
                            source: str = "the perplexity text") -> int:
    """Refuse, before any pass, a ``tokens`` request that ``text`` cannot fill: the scored
    tokens of its packed contexts (each context's last token has no target) are counted,
    tokenising at most what is asked for. Returns ``tokens``."""
    from interlayer.store.inputs import Tokenized

    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise InterlayerError(f"perplexity tokens must be a whole number of at least 1, got {tokens!r}")
    context_length = min(context_length, model.max_positions)
    available = 0
    for sequence in Tokenized(model).packed(text, context_length):
        available += len(sequence.ids) - 1
        if available >= tokens:
            return tokens
    raise InterlayerError(f"--perplexity-tokens {tokens} is more than {source} holds: {available} scored tokens "
                          f"(in contexts of {context_length}); give at most {available}")


def random_like(vector: SteeringVector, layer: int, seed: int = 0) -> SteeringVector:
    """A random direction with the norm of ``vector``'s at ``layer`` (seeded by ``seed`` and the layer)."""
    g = torch.Generator().manual_seed(epoch_seed(seed, layer))
    r = torch.randn(vector.d_model, generator=g)
    r = r / r.norm() * vector[layer].norm()
    return SteeringVector({layer: r}, site=vector.site, method="random", model=vector.model, dataset="random")


@dataclass
class SteeringSweepResult(Result):
    """Behaviour shift (with its 95% bootstrap interval over prompts, ``shift_low``/``shift_high``),
    the random baseline and Δ perplexity over layers × coefficients."""

    model: str
    dataset: str
    layers: list[int]
    coefs: list[float]
    base: float
    """Mean P(matching) without steering."""
    shift: np.ndarray
    """``[layers, coefs]`` mean P(matching) steered minus unsteered."""
    random_shift: np.ndarray
    delta_perplexity: np.ndarray
    base_perplexity: float
    n: int
    max_perplexity_ratio: float = 1.5
    shift_low: np.ndarray | None = None
    """``[layers, coefs]`` lower bound of the shift's 95% percentile-bootstrap interval over prompts."""
    shift_high: np.ndarray | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The cell with the largest shift whose perplexity stays within ``max_perplexity_ratio``
        of the unsteered one (the largest shift overall if none does)."""
        ok = (self.base_perplexity + self.delta_perplexity) <= self.max_perplexity_ratio * self.base_perplexity
        score = np.where(ok, self.shift, -np.inf) if ok.any() else self.shift
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        return {"layer": self.layers[i], "coef": self.coefs[j], "shift": float(self.shift[i, j]),
                "random_shift": float(self.random_shift[i, j]), "delta_perplexity": float(self.delta_perplexity[i, j]),
                "within_perplexity_bound": bool(ok[i, j])}

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer steer sweep --out``: rows are layers, columns coefficients."""
        best = self.best
        return {"model": self.model, "dataset": self.dataset, "layers": self.layers, "coefs": self.coefs,
                "base": self.base, "shift": self.shift.tolist(), "random_shift": self.random_shift.tolist(),
                "delta_perplexity": self.delta_perplexity.tolist(), "best": {"layer": best["layer"], "coef": best["coef"]},
                "base_perplexity": self.base_perplexity, "n": self.n, "best_cell": best,
                "max_perplexity_ratio": self.max_perplexity_ratio,
                "shift_low": None if self.shift_low is None else self.shift_low.tolist(),
                "shift_high": None if self.shift_high is None else self.shift_high.tolist()}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SteeringSweepResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "dataset", "layers", "coefs", "base", "shift", "random_shift", "delta_perplexity",
                "base_perplexity", "n", what="SteeringSweepResult")

        def grid(key: str) -> np.ndarray | None:
            value = payload.get(key)
            return None if value is None else np.asarray(value, dtype=float).reshape(len(payload["layers"]), -1)

        return cls(payload["model"], payload["dataset"], [int(l) for l in payload["layers"]],
                   [float(c) for c in payload["coefs"]], float(payload["base"]), grid("shift"), grid("random_shift"),
                   grid("delta_perplexity"), float(payload["base_perplexity"]), int(payload["n"]),
                   float(payload.get("max_perplexity_ratio", 1.5)), grid("shift_low"), grid("shift_high"))

    def headline(self) -> dict[str, Any]:
        """The grid, the base P(matching) and the best cell."""
        best = self.best
        return {"model": self.model, "dataset": self.dataset, "prompts": self.n, "layers": self.layers,
                "coefs": self.coefs, "base P(matching)": self.base, "best layer": best["layer"],
                "best coef": best["coef"], "shift there": best["shift"], "Δ perplexity there": best["delta_perplexity"]}

    def to_frame(self) -> pd.DataFrame:
        """One row per (layer, coef), the shift's interval with it when known."""
        rows = [{"layer": l, "coef": c, "shift": float(self.shift[i, j]), "random_shift": float(self.random_shift[i, j]),
                 "delta_perplexity": float(self.delta_perplexity[i, j]),
                 **({} if self.shift_low is None else {"shift_low": float(self.shift_low[i, j]),
                                                       "shift_high": float(self.shift_high[i, j])})}
                for i, l in enumerate(self.layers) for j, c in enumerate(self.coefs)]
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        """Heatmaps of the shift (its 95% interval in the hover text), the random shift and
        Δ perplexity; the best cell is marked."""
        titles = ("shift in P(matching)", "random direction, same norm", "Δ perplexity")
        fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.08)
        x = [f"{c:g}" for c in self.coefs]
        y = [str(l) for l in self.layers]
        limit = float(max(np.abs(self.shift).max(), np.abs(self.random_shift).max(), 1e-6))
        best = self.best
        for col, (z, scale) in enumerate(((self.shift, "RdBu"), (self.random_shift, "RdBu"),
                                          (self.delta_perplexity, "Reds")), 1):
            kwargs = {"zmin": -limit, "zmax": limit} if col < 3 else {}
            text = [[f"{float(v):.3f}" for v in row] for row in np.asarray(z)]
            if col == 1:  # the best cell's mark goes beside its number, not over it
                i, j = self.layers.index(best["layer"]), list(self.coefs).index(best["coef"])
                text[i][j] += " ★"
            if col == 1 and self.shift_low is not None:
                kwargs["hovertext"] = [[f"layer {l}, coef {c:g}: shift {self.shift[i, j]:.3f} "
                                        f"[{self.shift_low[i, j]:.3f}, {self.shift_high[i, j]:.3f}]"
                                        for j, c in enumerate(self.coefs)] for i, l in enumerate(self.layers)]
                kwargs["hoverinfo"] = "text"
            # the shift's colour bar stands right of the random heatmap, which shares its scale
            fig.add_trace(go.Heatmap(z=z, x=x, y=y, colorscale=scale, showscale=col != 2, text=text,
                                     texttemplate="%{text}", colorbar={"x": 0.645 if col == 1 else 1.0,
                                                                       "xanchor": "left", "len": 0.8,
                                                                       "thickness": 12}, **kwargs), 1, col)
        fig.update_xaxes(title_text="coefficient")
        fig.update_yaxes(title_text="layer", col=1)
        fig.update_layout(title=plot_text(f"Steering sweep: {self.dataset} on {self.model} (n={self.n}, "
                                            f"base P(matching) {self.base:.3f})"))
        return fig


def sweep(model: ModelAdapter, vector: SteeringVector, dataset: str | Sequence[ContrastPair], layers: Sequence[int],
          coefs: Sequence[float], *, n: int | None = 50, split: str = "test", seed: int = 0, perplexity_text: Any = None,
          perplexity_tokens: int = 512, batch_size: int = 8, max_perplexity_ratio: float = 1.5,
          chat: ChatMode | bool = "no", progress: bool = True) -> SteeringSweepResult:
    """Sweep ``layers`` × ``coefs``: behaviour shift, random-direction shift and Δ perplexity
    per cell (see the module docstring). All cells go through one store pass over the
    prompts and one over the perplexity text (:func:`interlayer.stream_variants`): each batch
    runs its clean prefix once, and each cell only the blocks after its layer."""
    from interlayer.model.loading import SAMPLE_TEXT

    vector.check_model(model)
    if not layers or not coefs:
        raise InterlayerError("a sweep needs at least one layer and one coefficient")
    for layer in layers:
        vector[layer]
    pairs = load_pairs(dataset, split, n) if isinstance(dataset, str) else list(dataset)[:n]
    text = perplexity_text if perplexity_text is not None else str(SAMPLE_TEXT)
    check_perplexity_tokens(model, text, perplexity_tokens,
                            source="the packaged sample text" if perplexity_text is None else "the perplexity text")
    prompts = answer_prompts(model, pairs, chat)
    # one store pass over the prompts for every cell (the clean prefix of each batch
    # computed once): variant 0 is unsteered, then (steered, random) per cell
    variants: list[dict[str, Any]] = [{}]
    for layer in layers:
        rand = random_like(vector, layer, seed)
        for coef in coefs:
            variants += [steer(model, vector, coef, layers=[layer]).edits(), steer(model, rand, coef).edits()]
    probs = p_matching_variants(model, prompts, variants, batch_size, progress=progress)
    ppls = perplexities(model, text, [variants[0], *variants[1::2]], tokens=perplexity_tokens)
    base_p, base_ppl = probs[0], ppls[0]
    shape = (len(layers), len(coefs))
    shift = np.array([float(np.mean(p - base_p)) for p in probs[1::2]]).reshape(shape)
    random_shift = np.array([float(np.mean(p - base_p)) for p in probs[2::2]]).reshape(shape)
    bands = [mean_interval(np.asarray(p - base_p, dtype=float), bounds=(-1.0, 1.0)) for p in probs[1::2]]
    shift_low = np.array([float(b[0]) for b in bands]).reshape(shape)
    shift_high = np.array([float(b[1]) for b in bands]).reshape(shape)
    delta_ppl = (np.array(ppls[1:]) - base_ppl).reshape(shape)
    name = dataset if isinstance(dataset, str) else "custom"
    return SteeringSweepResult(model.name, name, list(layers), [float(c) for c in coefs], float(base_p.mean()), shift,
                               random_shift, delta_ppl, base_ppl, len(pairs), max_perplexity_ratio, shift_low,
                               shift_high)


def __getattr__(name: str) -> Any:
    """``SweepResult``: the deprecated name of :class:`SteeringSweepResult` (one release; it
    clashed with the SAE sweep's), with a :class:`DeprecationWarning`."""
    if name == "SweepResult":
        warnings.warn("interlayer.steering.evaluation.SweepResult is renamed SteeringSweepResult",
                      DeprecationWarning, stacklevel=2)
        return SteeringSweepResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate_text(model: ModelAdapter, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``prompt`` as text (attach a :func:`steer` handle to steer it).
    Named apart from :func:`interlayer.lens.generate`, the layer-fused decoding; the
    generation itself is :func:`interlayer.generation.generate_texts`."""
    return generate_texts(model, [prompt], max_new_tokens=max_new_tokens)[0]


def generate(model: ModelAdapter, prompt: str, max_new_tokens: int = 40) -> str:
    """Deprecated name of :func:`generate_text` (one release; it clashed with :func:`interlayer.lens.generate`)."""
    warnings.warn("interlayer.steering.generate is renamed generate_text", DeprecationWarning, stacklevel=2)
    return generate_text(model, prompt, max_new_tokens)


__all__ = ["AnswerPrompts", "SteeringSweepResult", "answer_prompts", "generate_text", "p_matching",
           "p_matching_variants", "perplexities", "perplexity", "random_like", "sweep"]
