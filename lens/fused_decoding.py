"""Decoding with intermediate layers: greedy, LFD (layer fused decoding) and DoLa.

All three run through Hugging Face ``generate`` (greedy, KV cache, left-padded batches).
Adapter read hooks keep the last position of the needed sites on every forward pass;
a logits processor then decodes them through the shared
:class:`~interlayer.decoding.LayerDecoder`, in one head call per step, from the same
forward pass (never a second one) and only at the last position.

**LFD** (this project's reading of Sun et al. 2025; see :mod:`interlayer.lens.knowledge`).
At each step, per row: the IKS of every candidate block, ``l* = argmin`` (or a fixed
``layer``; ``lfd-random``: a seeded random candidate; ``select="example"``: chosen at the
first step and kept), then

* ``fusion="logits"`` (default): ``z = z_L + α · z_{l*}``, with ``z_{l*}`` decoded from
  ``resid_post.l*``;
* ``fusion="hidden"``: ``z = decode(h_L + α · h_{l*})``, ``h_L = resid_post.{N-1}``;

restricted to ``V_head = {x : p_L(x) >= β · max p_L}`` (``β = 0.1``), others ``-inf``; the
argmax is the next token. ``α = 0`` is greedy decoding.

**DoLa** (Chuang et al. 2024, as ``transformers`` implemented it before moving it out of
the library). Layers ``j`` count blocks applied, as ``output_hidden_states`` does: ``j = 0``
is the embeddings (``resid_pre.0``), ``j >= 1`` is ``resid_post.{j-1}``, ``N`` the final
layer. Buckets ``low = range(start, N // 2, 2)``, ``high = range(N // 2, N, 2)``,
``start = 2`` when the embeddings are tied (else 0). The premature layer ``M = argmax_j
JSD(q_N ‖ q_j)``; scores ``log q_N - log q_M`` on ``V_head``, ``-inf`` elsewhere; then a
repetition penalty (1.2 by default: a score ``s`` of a token already in the sequence
becomes ``s · 1.2`` if negative, else ``s / 1.2``). Two deliberate differences from the
transformers code: every ``q_j`` is decoded through the final norm (transformers applied
the bare ``lm_head`` to un-normed hidden states), and ``M`` is chosen per row (transformers
averaged the divergences over the batch, so a row's choice depended on its batch mates).

The pieces: the option group (:mod:`interlayer.lens.decoding_options`), DoLa's buckets
and contrast (:mod:`interlayer.lens.dola`), the step processor that decodes each step
(:mod:`interlayer.lens.fused_steps`) and Hugging Face ``generate`` itself, with its
padding and stopping conventions (:mod:`interlayer.generation`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from interlayer.progress import tqdm

from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError
from interlayer.generation import eos_ids, generate_ids, stop_length
from interlayer.layers import layer_from_hidden_index
from interlayer.model.adapter import ModelAdapter
from interlayer.results import Result, require
from interlayer.plot_text import plot_text

from .decoding_options import (DECODINGS, DEFAULT_ALPHA, DEFAULT_BETA, DOLA_BUCKETS, DOLA_REPETITION_PENALTY,
                               FUSIONS, DecodingOptions)
from .dola import dola_layers, dola_site, head_mask, repetition_penalty
from .fused_steps import Step, StepProcessor
from .knowledge import IKS_METRICS


@dataclass
class Generation(Result):
    """A generated continuation with, per step, the layer used and its scores.

    ``Step.layer`` is LFD's fusion block ``l*`` (a block index) or DoLa's premature layer
    ``M`` (a hidden index, 0 = the embeddings); :meth:`to_frame` names both numberings."""

    prompt: Any
    tokens: list[int]
    text: str
    steps: list[Step]
    decoding: str

    def to_json(self) -> dict[str, Any]:
        """What ``interlayer lens generate --json`` prints per prompt (and :meth:`save` writes)."""
        return {"prompt": self.prompt, "text": self.text, "tokens": self.tokens, "decoding": self.decoding,
                "steps": [{"token": s.token, "layer": s.layer, "scores": {str(k): v for k, v in s.scores.items()}}
                          for s in self.steps]}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Generation":
        """The generation :meth:`to_json` described (the CLI's per-prompt record)."""
        require(payload, "text", "tokens", "decoding", "steps", what="Generation")
        steps = [Step(int(s["token"]), None if s.get("layer") is None else int(s["layer"]),
                      {int(k): float(v) for k, v in s.get("scores", {}).items()}) for s in payload["steps"]]
        return cls(payload.get("prompt"), [int(t) for t in payload["tokens"]], payload["text"], steps,
                   payload["decoding"])

    @classmethod
    def load_all(cls, path: Any) -> list["Generation"]:
        """Every generation in ``path``: one that :meth:`save` (or ``interlayer lens generate
        --out`` with one prompt) wrote, or the JSON list of :meth:`to_json` records that
        ``lens generate --out`` writes for several prompts."""
        import json
        from pathlib import Path

        file = Path(path).expanduser()
        try:
            payload = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if not isinstance(payload, list):
            return [cls.load(file)]  # one generation, or load's one-line error
        try:
            return [cls.from_json(record) for record in payload]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InterlayerError(f"{file} is not a list of saved Generations ({type(err).__name__}: {err})") from err

    def to_frame(self) -> pd.DataFrame:
        """One row per step: the token, the layer used as a block index (``layer``) and, for
        DoLa, as the hidden index it was chosen by (``hidden_index``), and each score (``score[j]``)."""
        rows = []
        for i, s in enumerate(self.steps):
            row: dict[str, Any] = {"step": i, "token": s.token}
            if self.decoding == "dola" and s.layer is not None:
                row["hidden_index"] = s.layer
                row["layer"] = layer_from_hidden_index(s.layer)
            else:
                row["layer"] = s.layer
            row.update({f"score[{k}]": v for k, v in s.scores.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> go.Figure:
        """The layer used at each step (LFD's fusion block or DoLa's premature hidden state)."""
        frame = self.to_frame()
        column = "hidden_index" if "hidden_index" in frame else "layer"
        fig = go.Figure(go.Scatter(x=frame.step if len(frame) else [], y=frame[column] if column in frame else [],
                                   mode="lines+markers", name=column))
        fig.update_layout(title=plot_text(f"{self.decoding} decoding: {len(self.steps)} steps"), xaxis_title="step",
                          yaxis_title="hidden state (0 = embeddings)" if column == "hidden_index" else "layer")
        return fig

    def headline(self) -> dict[str, Any]:
        """The decoding, the text and the layers used."""
        used = sorted({s.layer for s in self.steps if s.layer is not None})
        return {"decoding": self.decoding, "steps": len(self.steps), "text": self.text,
                "layers used": used}



def generate(model: ModelAdapter, prompts: str | Sequence[str] | Sequence[Sequence[int]],
             options: DecodingOptions | None = None, *, max_new_tokens: int = 32, batch_size: int = 8,
             stop_at_newline: bool = False, lens: Lens = LOGIT_LENS, progress: bool = True,
             **kwargs: Any) -> Generation | list[Generation]:
    """Generate greedily with ``options.decoding`` (greedy, lfd, dola, lfd-random).

    ``prompts``: a string (returns one :class:`Generation`), or a list of strings or of
    token-id lists (returns a list). Keyword arguments not named here are fields of
    :class:`DecodingOptions` (``generate(model, "...", decoding="lfd", alpha=0.5)``).
    Each :class:`Generation` holds the tokens, the text and, per step, the layer used and
    the IKS (LFD) or JSD (DoLa) values. ``stop_at_newline`` ends a row at its first newline.
    """
    if options is not None and kwargs:
        raise InterlayerError("give either options= or DecodingOptions fields as keywords, not both")
    opts = options or DecodingOptions(**kwargs)
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InterlayerError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    if not items:
        raise InterlayerError("no prompts given")
    decoder = LayerDecoder(model, lens=lens)
    StepProcessor(model, decoder, opts, {}, set())  # validates layers before any work
    out: list[Generation] = []
    bar = tqdm(total=len(items), unit="prompt", desc=f"generate ({opts.decoding})", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            out += _generate_batch(model, decoder, items[start:start + batch_size], opts, max_new_tokens, stop_at_newline)
            bar.update(min(batch_size, len(items) - start))
    finally:
        bar.close()
    return out[0] if single else out


def last_position_keeper(rows: dict[str, Any], site: str) -> Callable[[Any], None]:
    """A read hook storing a copy of the last position of ``site`` in ``rows[site]``. A
    copy, not a view: a view of the prefill's ``[batch, tokens, d_model]`` output kept every
    site's whole prompt alive until the next step (at the quick report's IKS on Gemma-2-2B,
    53 sites x 4 passages x d_model 2,304 in bfloat16: an estimate, not measured alone)."""
    def keep(x: Any) -> None:
        rows[site] = x[:, -1].detach().clone()

    return keep


def _generate_batch(model: ModelAdapter, decoder: LayerDecoder, items: list[Any], opts: DecodingOptions,
                    max_new_tokens: int, stop_at_newline: bool) -> list[Generation]:
    """One left-padded batch through :func:`interlayer.generation.generate_ids`, with read
    hooks keeping the last position of every site the step processor needs."""
    eos = eos_ids(model)
    rows: dict[str, Any] = {}
    processor = StepProcessor(model, decoder, opts, rows, eos)

    generate_ids(model, items, max_new_tokens=max_new_tokens, processors=[processor], stop_at_newline=stop_at_newline,
                 hooks={site: last_position_keeper(rows, site) for site in processor.sites()},
                 skip_head=processor.own_head)
    results = []
    for row, item in enumerate(items):
        steps = _until_stop(model, processor.steps[row] if processor.steps else [], eos, stop_at_newline)
        tokens = [s.token for s in steps]
        text = model.tokenizer.decode(tokens, skip_special_tokens=True) if model.tokenizer is not None else ""
        results.append(Generation(item, tokens, text, steps, opts.decoding))
    return results


def _until_stop(model: ModelAdapter, steps: list[Step], eos: set[int], stop_at_newline: bool) -> list[Step]:
    """A row's steps up to where generation stopped for it (:func:`interlayer.generation.stop_length`)."""
    return steps[:stop_length(model, [s.token for s in steps], eos, stop_at_newline)]


__all__ = ["DECODINGS", "DEFAULT_ALPHA", "DEFAULT_BETA", "DOLA_BUCKETS", "DOLA_REPETITION_PENALTY", "DecodingOptions",
           "FUSIONS", "Generation", "IKS_METRICS", "Step", "StepProcessor", "dola_layers", "dola_site", "generate",
           "head_mask", "repetition_penalty"]
