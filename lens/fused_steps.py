"""The step processor of LFD, DoLa and greedy decoding with IKS recording: a Hugging Face
logits processor that turns the hooked last-position rows of one forward pass into the
decoding's scores (the formulas are in :mod:`interlayer.lens.fused_decoding`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from interlayer.decoding import LayerDecoder
from interlayer.errors import LayerIndexError
from interlayer.layers import layer_from_hidden_index
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site

from .decoding_options import DecodingOptions
from .dola import dola_contrast, dola_layers, dola_site, head_mask, repetition_penalty
from .knowledge import candidate_layers, iks

LOGITS_CHUNK_MB = 64.0
"""MiB of float32 logits greedy decoding with IKS recording holds at once per step."""


@dataclass
class Step:
    """One decoding step of one sequence."""

    token: int
    layer: int | None = None
    """LFD: the fusion block l*; DoLa: the premature layer M; greedy: None."""
    scores: dict[int, float] = field(default_factory=dict)
    """LFD / recorded: IKS per block; DoLa: JSD(q_N ‖ q_j) per layer j."""


def _mid(layer: int) -> str:
    return Site(layer, "resid_mid").name


def _post(layer: int) -> str:
    return Site(layer, "resid_post").name


class StepProcessor:
    """The logits processor: turns the hooked last-position rows of one forward pass into
    the decoding's scores, and records what it chose.

    Every row it needs (the final state, both sides of each candidate's FFN, DoLa's
    layers) is decoded in one head call per step (greedy decoding recording IKS: in calls
    of :data:`LOGITS_CHUNK_MB`). Unless the decoding is plain greedy, the
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
        plan: list[tuple[str, int | None]] = [(_post(last), last)] if self.own_head else []
        if self.opts.metric == "jsd":
            plan += [(_mid(l), l) for l in self.iks_layers]
        plan += [(_post(l), l) for l in sorted(set(self.iks_layers) | set(self.fusion_layers))]
        plan += [(dola_site(j), layer_from_hidden_index(j, self.model.n_layers)) for j in self.dola]
        return list(dict.fromkeys(plan))

    def sites(self) -> list[str]:
        """The sites whose last position each step needs: those decoded, and for the cosine
        IKS the ``resid_mid`` states it compares undecoded."""
        mids = [_mid(l) for l in self.iks_layers] if self.opts.metric == "cosine" else []
        return list(dict.fromkeys([site for site, _ in self._plan()] + mids))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prompt_width is None:
            self.prompt_width = int(input_ids.shape[1])
            self.steps = [[] for _ in range(input_ids.shape[0])]
        plan = self._plan()
        decoded: dict[str, torch.Tensor] = {}
        if self.opts.decoding == "greedy":
            final, values = self._greedy_step(scores)
        else:
            logits = self.decoder.layer_logits(torch.stack([self.rows[s] for s, _ in plan]), [l for _, l in plan])
            decoded = {site: logits[i] for i, (site, _) in enumerate(plan)}
            final = decoded[plan[0][0]].to(scores.device) if self.own_head else scores.float()
            values = self._iks(decoded)
        chosen: torch.Tensor | None = None
        divergences: dict[int, torch.Tensor] = {}
        if self.opts.decoding == "greedy":
            out = final
        elif self.opts.decoding == "dola":
            premature = torch.stack([decoded[dola_site(j)] for j in self.dola])
            out, chosen, divergences = dola_contrast(final, premature, self.dola, self.opts.beta)
        else:
            chosen = self._fusion_layer(values, final.shape[0])
            out = self._lfd(final, chosen, decoded)
        out = repetition_penalty(out, input_ids, self.opts.penalty)
        self._note(input_ids, out, chosen, values, divergences)
        return out

    def _greedy_step(self, scores: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Greedy decoding's final logits and the recorded IKS. Only the final row and, for
        the JSD IKS, each layer's (``resid_mid``, ``resid_post``) pair need logits: they are
        decoded :data:`LOGITS_CHUNK_MB` at a time, final row first, then pair by pair, each
        pair's IKS taken once both sides are decoded (at Gemma-2-2B's vocabulary every
        layer's logits at once were 0.3 GiB per step, the quick report's memory peak)."""
        if not self.own_head:
            return scores.float(), {}
        last = self.model.n_layers - 1
        order = [(_post(last), last)]
        if self.opts.metric == "jsd":
            order += [pair for l in self.iks_layers for pair in ((_mid(l), l), (_post(l), l)) if pair != order[0]]
        rows = int(self.rows[order[0][0]].shape[0])
        per = max(2, int(LOGITS_CHUNK_MB * 2**20 // max(1, rows * self.model.vocab_size * 4)))
        final: torch.Tensor | None = None
        values: dict[int, torch.Tensor] = {}
        pending: dict[str, torch.Tensor] = {}
        for start in range(0, len(order), per):
            part = order[start:start + per]
            logits = self.decoder.layer_logits(torch.stack([self.rows[s] for s, _ in part]), [l for _, l in part])
            got = {site: logits[i] for i, (site, _) in enumerate(part)}
            if final is None:
                final = got.pop(order[0][0]).clone()
            pending.update(got)
            have = {**pending, order[0][0]: final}
            for l in self.iks_layers if self.opts.metric == "jsd" else ():
                if l not in values and _mid(l) in have and _post(l) in have:
                    values[l] = iks(have[_mid(l)][None], have[_post(l)][None], "jsd")[0]
                    pending.pop(_mid(l), None)
                    pending.pop(_post(l), None)
            pending = {k: v.clone() for k, v in pending.items()}  # a half pair outlives its chunk, not the chunk
            del logits, got, have
        if self.opts.metric != "jsd":
            values = self._iks({})
        assert final is not None
        return final.to(scores.device), values

    def _iks(self, decoded: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """IKS of every recorded layer (:func:`~interlayer.lens.knowledge.iks`), from the
        states (cosine) or from this step's decoded logits (JSD)."""
        if not self.iks_layers:
            return {}
        source = self.rows if self.opts.metric == "cosine" else decoded
        # layer by layer, without stacking copies of every layer's logits
        return {l: iks(source[_mid(l)][None], source[_post(l)][None], self.opts.metric)[0] for l in self.iks_layers}

    def _fusion_layer(self, values: dict[int, torch.Tensor], b: int) -> torch.Tensor:
        if self.opts.layer is not None:
            return torch.full((b,), self.opts.layer, dtype=torch.long)
        if self.opts.select == "example" and self.fixed is not None:
            return self.fixed
        cands = torch.tensor(self.candidates)
        if self.opts.decoding == "lfd-random":
            chosen = cands[torch.randint(len(cands), (b,), generator=self.generator)]
        else:
            chosen = cands[torch.stack([values[l] for l in self.candidates]).argmin(0)]
        if self.opts.select == "example":
            self.fixed = chosen
        return chosen

    def _lfd(self, final: torch.Tensor, chosen: torch.Tensor, decoded: dict[str, torch.Tensor]) -> torch.Tensor:
        device = final.device
        layers = [int(l) for l in chosen]
        if self.opts.fusion == "logits":
            z_fusion = torch.stack([decoded[_post(l)][row] for row, l in enumerate(layers)]).to(device)
            fused = final + self.opts.alpha * z_fusion
        else:
            last = self.model.n_layers - 1
            h = torch.stack([self.rows[_post(l)][row] for row, l in enumerate(layers)])
            fused = self.decoder.layer_logits((self.rows[_post(last)] + self.opts.alpha * h)[None], [last])[0]
            fused = fused.to(device)
        return fused.masked_fill(~head_mask(final, self.opts.beta), float("-inf"))

    def _note(self, input_ids: torch.Tensor, out: torch.Tensor, chosen: torch.Tensor | None,
              values: dict[int, torch.Tensor], divergences: dict[int, torch.Tensor]) -> None:
        generated = input_ids[:, self.prompt_width:]
        tokens = out.argmax(-1).tolist()
        for row, steps in enumerate(self.steps):
            if any(int(t) in self.eos for t in generated[row].tolist()):
                continue  # finished: the rest is padding
            scores = {l: float(v[row]) for l, v in (divergences or values).items()}
            layer = None if chosen is None else int(chosen[row])
            steps.append(Step(int(tokens[row]), layer, scores))


__all__ = ["Step", "StepProcessor"]
