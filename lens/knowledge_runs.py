"""The knowledge-layer analyses on QA data: IKS per layer while the model answers
(``interlayer iks``), and SimHidden with and without the answer-bearing sentence."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, Lens
from interlayer.errors import InterlayerError, choices

from .fused_decoding import DecodingOptions, generate
from .knowledge import FUSION_SELECTIONS, IKSResult, SimHiddenResult, candidate_layers, check_metric, sim_hidden, without_answer_sentence
from .qa import qa_prompt, use_chat
from .qa_data import QARecord, load_qa


def measure_iks(model: ModelAdapter, prompts: Sequence[Any], *, candidates: Sequence[int] | str | None = None,
                metric: str = "jsd", select: str = "step", max_new_tokens: int = 8, batch_size: int = 8,
                lens: Lens = LOGIT_LENS, progress: bool = True) -> IKSResult:
    """IKS of every layer while the model answers ``prompts`` greedily: at every decoding
    step (``select="step"``) or only at the prompt's last position (``"example"``); the
    fusion layer of each step is the candidate with the lowest IKS."""
    check_metric(metric)
    if select not in FUSION_SELECTIONS:
        raise InterlayerError(f"unknown selection {select!r}; valid choices: {choices(FUSION_SELECTIONS)}")
    cands = candidate_layers(model, candidates)
    layers = list(range(model.n_layers))
    opts = DecodingOptions(decoding="greedy", metric=metric, record=layers)
    steps = 1 if select == "example" else max_new_tokens
    gens = generate(model, list(prompts), opts, max_new_tokens=steps, batch_size=batch_size, lens=lens,
                    progress=progress)
    rows = [[step.scores[l] for l in layers] for g in gens for step in g.steps]
    if not rows:
        raise InterlayerError("no decoding steps were recorded (every prompt ended at once)")
    values = np.array(rows)
    index = [layers.index(c) for c in cands]
    chosen = [cands[int(i)] for i in values[:, index].argmin(1)]
    return IKSResult(model.name, len(gens), layers, cands, values, chosen, metric, select)


def qa_prompts(model: ModelAdapter, records: Sequence[QARecord], *, passage: bool, chat: str | bool = "auto",
               cloze: bool = False) -> list[str]:
    """One prompt per record, with its gold passage (``passage``) or without."""
    on = use_chat(model, chat)
    return [qa_prompt(model, r, [r.passage] if passage and r.passage else None, chat=on, cloze=cloze) for r in records]


def iks_on_data(model: ModelAdapter, data: str = "nq", n: int = 50, *, passage: bool = True, chat: str | bool = "auto",
                **kwargs: Any) -> IKSResult:
    """:func:`measure_iks` on the QA prompts of ``data`` (``nq``, ``squad``, ``known`` or a path)."""
    loaded = load_qa(data, n)
    if passage and not any(r.passage for r in loaded.records):
        raise InterlayerError(f"{data!r} has no passages; use passage=False (--no-passage)")
    prompts = qa_prompts(model, loaded.records, passage=passage, chat=chat, cloze=data == "known")
    result = measure_iks(model, prompts, **kwargs)
    result.extra = {"data": data, "passage": passage, "skipped": loaded.skipped}
    return result


def sim_hidden_on_data(model: ModelAdapter, data: str = "nq", n: int = 50, *, chat: str | bool = "auto",
                       batch_size: int = 8, progress: bool = True) -> SimHiddenResult:
    """SimHidden per layer on ``data``'s open-book prompts: each with its gold passage and
    with the passage's answer-bearing sentences removed (records where no sentence holds
    an answer are skipped and counted)."""
    loaded = load_qa(data, n)
    on = use_chat(model, chat)
    with_ctx, without_ctx, skipped = [], [], 0
    for r in loaded.records:
        reduced = without_answer_sentence(r.passage, r.answers) if r.passage else None
        if reduced is None:
            skipped += 1
            continue
        with_ctx.append(qa_prompt(model, r, [r.passage], chat=on))
        without_ctx.append(qa_prompt(model, r, [reduced] if reduced.strip() else None, chat=on))
    if not with_ctx:
        raise InterlayerError(f"no record of {data!r} has a passage sentence holding its answer")
    return sim_hidden(model, with_ctx, without_ctx, skipped=skipped, batch_size=batch_size, progress=progress)


__all__ = ["iks_on_data", "measure_iks", "qa_prompts", "sim_hidden_on_data"]
