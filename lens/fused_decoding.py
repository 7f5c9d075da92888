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
"""

from __future__ import annotations

import contextlib
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError, LayerIndexError, choices
from interlayer.layers import hidden_index_site, layer_from_hidden_index
from interlayer.results import Result, require

from .knowledge import IKS_METRICS, SELECTIONS, candidate_layers, check_metric, cosine_distance, jsd

DECODINGS: tuple[str, ...] = ("greedy", "lfd", "dola", "lfd-random")
FUSIONS: tuple[str, ...] = ("logits", "hidden")
DOLA_BUCKETS: tuple[str, ...] = ("high", "low")
DEFAULT_ALPHA = 0.25
"""LFD's default α, chosen on a held-out split (see the README's knowledge findings and
``benchmarks/knowledge_alpha.py``)."""
DEFAULT_BETA = 0.1
DOLA_REPETITION_PENALTY = 1.2


@dataclass
class DecodingOptions:
    """How :func:`generate` picks each next token (see the module docstring)."""

    decoding: str = "greedy"
    """greedy, lfd, dola or lfd-random."""
    candidates: Sequence[int] | str | None = None
    """LFD: candidate blocks (default: the even blocks of the latter half)."""
    layer: int | None = None
    """LFD: a fixed fusion block (no IKS selection); DoLa: a fixed premature layer j."""
    alpha: float = DEFAULT_ALPHA
    """LFD: weight of the fusion layer, >= 0."""
    beta: float = DEFAULT_BETA
    """V_head threshold, in (0, 1]."""
    fusion: str = "logits"
    """LFD: 'logits' (z_L + α z_l*) or 'hidden' (decode(h_L + α h_l*))."""
    metric: str = "jsd"
    """IKS: 'jsd' of the decoded distributions or 'cosine' distance of the states."""
    select: str = "step"
    """LFD: choose l* at every 'step', or once per 'example' (at the prompt's last position)."""
    dola_layers: str | Sequence[int] = "high"
    """DoLa: 'high', 'low' or a list of layers j (0 = embeddings, N-1 at most)."""
    repetition_penalty: float | None = None
    """None: 1.2 for DoLa, none otherwise."""
    seed: int = 0
    """lfd-random: seed of the random candidate choices."""
    record: Sequence[int] | None = None
    """Blocks whose IKS to record at every step (default: the candidates, for LFD)."""

    def __post_init__(self) -> None:
        if self.decoding not in DECODINGS:
            raise InterlayerError(f"unknown decoding {self.decoding!r}; valid choices: {choices(DECODINGS)}")
        if self.fusion not in FUSIONS:
            raise InterlayerError(f"unknown fusion {self.fusion!r}; valid choices: {choices(FUSIONS)}")
        check_metric(self.metric)
        if self.select not in SELECTIONS:
            raise InterlayerError(f"unknown selection {self.select!r}; valid choices: {choices(SELECTIONS)}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise InterlayerError(f"alpha must be a number >= 0, got {self.alpha!r}")
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta <= 1):
            raise InterlayerError(f"beta must lie in (0, 1], got {self.beta!r}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise InterlayerError(f"repetition_penalty must be positive, got {self.repetition_penalty!r}")
        if isinstance(self.dola_layers, str) and self.dola_layers not in DOLA_BUCKETS:
            raise InterlayerError(f"unknown DoLa bucket {self.dola_layers!r}; valid choices: {choices(DOLA_BUCKETS)} "
                                  "or a list of layers")

    @property
    def penalty(self) -> float:
        if self.repetition_penalty is not None:
            return float(self.repetition_penalty)
        return DOLA_REPETITION_PENALTY if self.decoding == "dola" else 1.0


def dola_layers(model: ModelAdapter, bucket: str | Sequence[int] = "high") -> list[int]:
    """DoLa's candidate premature layers ``j`` (blocks applied; 0 = the embeddings), as
    transformers chose them: ``low = range(start, N // 2, 2)``, ``high = range(N // 2, N, 2)``
    for ``N <= 40`` (``range(0, 20, 2)`` / ``range(N - 20, N, 2)`` above), ``start = 2`` when
    the input and output embeddings are tied (1 for two-layer, 0 for one-layer models)."""
    n = model.n_layers
    if not isinstance(bucket, str):
        out = sorted({int(j) for j in bucket})
        if not out:
            raise InterlayerError(f"the DoLa layer list is empty; give layers j in 0..{n - 1}")
        for j in out:
            if not 0 <= j < n:
                raise LayerIndexError(f"DoLa layer {j} is out of range; valid layers are 0..{n - 1} "
                                      "(j counts blocks applied: 0 is the embeddings)")
        return out
    tied = bool(getattr(model.model.config, "tie_word_embeddings", False))
    start = (2 if n > 2 else 1 if n == 2 else 0) if tied else 0
    if bucket == "low":
        if start == n // 2:
            return [start]
        return list(range(start, n // 2, 2) if n <= 40 else range(start, 20, 2))
    if bucket == "high":
        return list(range(n // 2, n, 2) if n <= 40 else range(n - 20, n, 2))
    raise InterlayerError(f"unknown DoLa bucket {bucket!r}; valid choices: {choices(DOLA_BUCKETS)} or a list of layers")


def dola_site(j: int) -> str:
    """The hook site of DoLa layer ``j`` (blocks applied: a hidden index, :mod:`interlayer.layers`)."""
    return hidden_index_site(j)


@dataclass
class Step:
    """One decoding step of one sequence."""

    token: int
    layer: int | None = None
    """LFD: the fusion block l*; DoLa: the premature layer M; greedy: None."""
    scores: dict[int, float] = field(default_factory=dict)
    """LFD / recorded: IKS per block; DoLa: JSD(q_N ‖ q_j) per layer j."""


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
        fig.update_layout(title=html.escape(f"{self.decoding} decoding: {len(self.steps)} steps"), xaxis_title="step",
                          yaxis_title="hidden state (0 = embeddings)" if column == "hidden_index" else "layer")
        return fig

    def headline(self) -> dict[str, Any]:
        """The decoding, the text and the layers used."""
        used = sorted({s.layer for s in self.steps if s.layer is not None})
        return {"decoding": self.decoding, "steps": len(self.steps), "text": self.text,
                "layers used": used}


def head_mask(final_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """``V_head``: tokens whose final-layer probability is at least ``beta`` times the
    largest one (``[rows, vocab]`` bool); the top token is always in it."""
    logp = torch.log_softmax(final_logits.float(), -1)
    return logp >= logp.max(-1, keepdim=True).values + torch.log(torch.tensor(beta))


def repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: a seen token's score ``s`` becomes ``s · p`` if
    ``s < 0``, else ``s / p``."""
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


class _StepProcessor:
    """The logits processor: turns the hooked last-position rows of one forward pass into
    the decoding's scores, and records what it chose.

    Every row it needs (the final state, both sides of each candidate's FFN, DoLa's
    layers) is decoded in one head call per step. Unless the decoding is plain greedy, the
    model's own unembedding is skipped (:meth:`ModelAdapter.skip_head`) and the final
    logits come from that same call, so the unembedding is read once per step."""

    def __init__(self, model: ModelAdapter, decoder: LayerDecoder, opts: DecodingOptions, rows: dict[str, torch.Tensor],
                 eos: set[int]) -> None:
        self.model, self.decoder, self.opts, self.rows, self.eos = model, decoder, opts, rows, eos
        n = model.n_layers
        lfd = opts.decoding in ("lfd", "lfd-random")
        self.candidates = candidate_layers(model, opts.candidates) if lfd else []
        if opts.layer is not None and lfd and not 0 <= opts.layer < n:
            raise LayerIndexError(f"fusion layer {opts.layer} is out of range; valid layers are 0..{n - 1}")
        self.record = candidate_layers(model, opts.record) if opts.record is not None else list(self.candidates)
        self.iks_layers = sorted(set(self.record) | set(self.candidates))
        self.fusion_layers = sorted(set(self.candidates) | ({opts.layer} if lfd and opts.layer is not None else set()))
        self.dola = []
        if opts.decoding == "dola":
            self.dola = dola_layers(model, [opts.layer] if opts.layer is not None else opts.dola_layers)
        self.own_head = opts.decoding != "greedy" or bool(self.iks_layers)
        self.generator = torch.Generator().manual_seed(opts.seed)
        self.steps: list[list[Step]] = []
        self.prompt_width: int | None = None
        self.fixed: torch.Tensor | None = None

    # the rows decoded at each step, in order: (site, lens layer)
    def _plan(self) -> list[tuple[str, int | None]]:
        last = self.model.n_layers - 1
        plan: list[tuple[str, int | None]] = [(f"resid_post.{last}", last)] if self.own_head else []
        if self.opts.metric == "jsd":
            plan += [(f"resid_mid.{l}", l) for l in self.iks_layers]
        plan += [(f"resid_post.{l}", l) for l in sorted(set(self.iks_layers) | set(self.fusion_layers))]
        plan += [(dola_site(j), layer_from_hidden_index(j, self.model.n_layers)) for j in self.dola]
        return list(dict.fromkeys(plan))

    def sites(self) -> list[str]:
        """The sites whose last position each step needs."""
        return list(dict.fromkeys(site for site, _ in self._plan()))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_width is None:
            self.prompt_width = int(input_ids.shape[1])
            self.steps = [[] for _ in range(input_ids.shape[0])]
        plan = self._plan()
        decoded: dict[str, torch.Tensor] = {}
        if plan:
            logits = self.decoder.layer_logits(torch.stack([self.rows[s] for s, _ in plan]), [l for _, l in plan])
            decoded = {site: logits[i] for i, (site, _) in enumerate(plan)}
        final = decoded[plan[0][0]].to(scores.device) if self.own_head else scores.float()
        iks = self._iks(decoded)
        chosen: torch.Tensor | None = None
        divergences: dict[int, torch.Tensor] = {}
        if self.opts.decoding == "greedy":
            out = final
        elif self.opts.decoding == "dola":
            out, chosen, divergences = self._dola(final, decoded)
        else:
            chosen = self._fusion_layer(iks, final.shape[0])
            out = self._lfd(final, chosen, decoded)
        out = repetition_penalty(out, input_ids, self.opts.penalty)
        self._note(input_ids, out, chosen, iks, divergences)
        return out

    def _iks(self, decoded: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        if not self.iks_layers:
            return {}
        if self.opts.metric == "cosine":
            mid = torch.stack([self.rows[f"resid_mid.{l}"] for l in self.iks_layers])
            post = torch.stack([self.rows[f"resid_post.{l}"] for l in self.iks_layers])
            values = cosine_distance(mid, post).cpu()
        else:
            logp = torch.log_softmax(torch.stack([decoded[f"{kind}.{l}"] for kind in ("resid_mid", "resid_post")
                                                  for l in self.iks_layers]), -1)
            values = jsd(logp[: len(self.iks_layers)], logp[len(self.iks_layers):]).cpu()
        return {l: values[i] for i, l in enumerate(self.iks_layers)}

    def _fusion_layer(self, iks: dict[int, torch.Tensor], b: int) -> torch.Tensor:
        if self.opts.layer is not None:
            return torch.full((b,), self.opts.layer, dtype=torch.long)
        if self.opts.select == "example" and self.fixed is not None:
            return self.fixed
        cands = torch.tensor(self.candidates)
        if self.opts.decoding == "lfd-random":
            chosen = cands[torch.randint(len(cands), (b,), generator=self.generator)]
        else:
            chosen = cands[torch.stack([iks[l] for l in self.candidates]).argmin(0)]
        if self.opts.select == "example":
            self.fixed = chosen
        return chosen

    def _lfd(self, final: torch.Tensor, chosen: torch.Tensor, decoded: dict[str, torch.Tensor]) -> torch.Tensor:
        device = final.device
        layers = [int(l) for l in chosen]
        if self.opts.fusion == "logits":
            z_fusion = torch.stack([decoded[f"resid_post.{l}"][row] for row, l in enumerate(layers)]).to(device)
            fused = final + self.opts.alpha * z_fusion
        else:
            last = self.model.n_layers - 1
            h = torch.stack([self.rows[f"resid_post.{l}"][row] for row, l in enumerate(layers)])
            fused = self.decoder.layer_logits((self.rows[f"resid_post.{last}"] + self.opts.alpha * h)[None], [last])[0]
            fused = fused.to(device)
        return fused.masked_fill(~head_mask(final, self.opts.beta), float("-inf"))

    def _dola(self, final: torch.Tensor, decoded: dict[str, torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
        device = final.device
        logq = torch.log_softmax(torch.stack([decoded[dola_site(j)] for j in self.dola]), -1).to(device)
        logq_n = torch.log_softmax(final, -1)
        div = jsd(logq_n[None].expand_as(logq), logq)  # [layers, b]
        best = div.argmax(0)
        rows = torch.arange(final.shape[0])
        contrast = logq_n - logq[best, rows]
        chosen = torch.tensor(self.dola)[best.cpu()]
        return (contrast.masked_fill(~head_mask(final, self.opts.beta), float("-inf")), chosen,
                {j: div[i].cpu() for i, j in enumerate(self.dola)})

    def _note(self, input_ids: torch.Tensor, out: torch.Tensor, chosen: torch.Tensor | None,
              iks: dict[int, torch.Tensor], divergences: dict[int, torch.Tensor]) -> None:
        generated = input_ids[:, self.prompt_width:]
        tokens = out.argmax(-1).tolist()
        for row, steps in enumerate(self.steps):
            if any(int(t) in self.eos for t in generated[row].tolist()):
                continue  # finished: the rest is padding
            scores = {l: float(v[row]) for l, v in (divergences or iks).items()}
            layer = None if chosen is None else int(chosen[row])
            steps.append(Step(int(tokens[row]), layer, scores))


def _eos_ids(model: ModelAdapter) -> set[int]:
    ids = set()
    config_eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    for value in (model.eos_token_id, config_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class _StopAtNewline:
    """Stops a row once its generated text holds a newline."""

    def __init__(self, model: ModelAdapter, width: int) -> None:
        self.model, self.width = model, width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.model.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor(["\n" in t for t in texts], device=input_ids.device)


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
    _StepProcessor(model, decoder, opts, {}, set())  # validates layers before any work
    out: list[Generation] = []
    bar = tqdm(total=len(items), unit="prompt", desc=f"generate ({opts.decoding})", disable=not progress)
    try:
        for start in range(0, len(items), batch_size):
            out += _generate_batch(model, decoder, items[start:start + batch_size], opts, max_new_tokens, stop_at_newline)
            bar.update(min(batch_size, len(items) - start))
    finally:
        bar.close()
    return out[0] if single else out


def _left_padded(model: ModelAdapter, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if all(isinstance(x, str) for x in items):
        batch = model.tokenize(items, padding_side="left")
        return batch["input_ids"], batch["attention_mask"]
    rows = [list(map(int, x)) for x in items]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), model.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


def _generate_batch(model: ModelAdapter, decoder: LayerDecoder, items: list[Any], opts: DecodingOptions,
                    max_new_tokens: int, stop_at_newline: bool) -> list[Generation]:
    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    ids, mask = _left_padded(model, items)
    eos = _eos_ids(model)
    rows: dict[str, torch.Tensor] = {}
    processor = _StepProcessor(model, decoder, opts, rows, eos)

    def keeper(site: str):
        def keep(x: torch.Tensor) -> None:
            rows[site] = x[:, -1].detach()

        return keep

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=model.pad_token_id, eos_token_id=sorted(eos) or None)
    stopping = StoppingCriteriaList([_StopAtNewline(model, ids.shape[1])]) if stop_at_newline else None
    skip = model.skip_head() if processor.own_head else contextlib.nullcontext()
    with torch.no_grad(), model.hooks({site: keeper(site) for site in processor.sites()}), skip:
        out = model.model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                   generation_config=config, logits_processor=LogitsProcessorList([processor]),
                                   stopping_criteria=stopping)
    del out
    results = []
    for row, item in enumerate(items):
        steps = _until_stop(model, processor.steps[row] if processor.steps else [], eos, stop_at_newline)
        tokens = [s.token for s in steps]
        text = model.tokenizer.decode(tokens, skip_special_tokens=True) if model.tokenizer is not None else ""
        results.append(Generation(item, tokens, text, steps, opts.decoding))
    return results


def _until_stop(model: ModelAdapter, steps: list[Step], eos: set[int], stop_at_newline: bool) -> list[Step]:
    """A row's steps up to where generation stopped for it (an EOS token, or its first
    newline); the batch may have gone on for other rows."""
    kept: list[Step] = []
    for step in steps:
        kept.append(step)
        if step.token in eos:
            break
        if stop_at_newline and model.tokenizer is not None and \
                "\n" in model.tokenizer.decode([s.token for s in kept], skip_special_tokens=True):
            break
    return kept


__all__ = ["DECODINGS", "DEFAULT_ALPHA", "DEFAULT_BETA", "DecodingOptions", "FUSIONS", "Generation", "IKS_METRICS",
           "Step", "dola_layers", "dola_site", "generate", "head_mask", "repetition_penalty"]
