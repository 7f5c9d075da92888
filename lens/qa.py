"""Retrieval-augmented QA with layer-aware decoding (``interlayer lens qa``): each decoding
(greedy, LFD, DoLa, LFD with a random layer) answers every question closed book (no
passage) and open book (the gold passage, optionally among ``noise_docs`` passages of
other questions); exact match and answer-contained with 95% Wilson intervals.

Prompts: ``Answer the question with a short answer.`` then the documents (open book),
``Question: ...`` and ``Answer:``; an instruct model gets the same text as one user turn
of its chat template. ``known`` (ROME cloze facts) is closed book only: the prompt is the
cloze sentence itself, to be completed. The first line of each generation is the answer.

Progress is kept in ``OUT.progress.jsonl``, a resume journal (:mod:`interlayer.io.journal`:
a header naming the run's settings, then one line per finished batch); a rerun with the
same settings resumes from it, one with other settings is refused, and it is removed when
the result is written.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from interlayer.progress import tqdm

from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, Lens
from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_json_atomic
from interlayer.io.journal import Journal
from interlayer.options import str_list
from interlayer.prompts import CHAT_MODES, ChatMode, chat_turn, use_chat
from interlayer.results import Result, require
from interlayer.plot_text import plot_text

from .fused_decoding import DECODINGS, DecodingOptions, generate
from .qa_data import QALoad, QARecord, load_qa, noise_passages, with_passages
from .qa_metrics import SETTINGS, MethodScore, first_answer_span, score

log = logging.getLogger(__name__)

CHAT_CHOICES: tuple[str, ...] = CHAT_MODES
"""The ``chat`` settings (:data:`interlayer.prompts.CHAT_MODES`; kept here for one release)."""


def qa_prompt(model: ModelAdapter, record: QARecord, passages: Sequence[str] | None, *, chat: bool,
              cloze: bool = False) -> str:
    """The prompt text of one question (see the module docstring); ``chat``: whether it goes
    through the chat template (already resolved, :func:`interlayer.prompts.use_chat`)."""
    if cloze:
        return record.question
    parts = ["Answer the question with a short answer."]
    if passages:
        parts.append("\n".join(f"Document [{i + 1}]: {p}" for i, p in enumerate(passages)))
    parts.append(f"Question: {record.question}")
    if not chat:
        return "\n\n".join(parts) + "\nAnswer:"
    return chat_turn(model, "\n\n".join(parts))


@dataclass
class QAResult(Result):
    """Scores per decoding and setting, with every prediction."""

    model: str
    data: str
    n: int
    skipped: int
    noise_docs: int
    decodings: list[str]
    scores: list[MethodScore]
    examples: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer lens qa --out``; the settings are top-level keys."""
        return {"model": self.model, "data": self.data, "n": self.n, "skipped": self.skipped,
                "noise_docs": self.noise_docs, "decodings": self.decodings,
                "results": [s.to_json() for s in self.scores], **self.settings, "examples": self.examples}

    _OWN = frozenset({"model", "data", "n", "skipped", "noise_docs", "decodings", "results", "examples"})

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "QAResult":
        """The result :meth:`to_json` described; other top-level keys are the settings."""
        require(payload, "model", "data", "n", "decodings", "results", what="QAResult")
        return cls(model=payload["model"], data=payload["data"], n=int(payload["n"]),
                   skipped=int(payload.get("skipped", 0)), noise_docs=int(payload.get("noise_docs", 0)),
                   decodings=list(payload["decodings"]),
                   scores=[MethodScore.from_json(r) for r in payload["results"]],
                   examples=list(payload.get("examples", [])),
                   settings={k: v for k, v in payload.items() if k not in cls._OWN})

    def headline(self) -> dict[str, Any]:
        """Exact match of every (decoding, setting) with its Wilson interval."""
        out: dict[str, Any] = {"model": self.model, "data": self.data, "questions": self.n, "skipped": self.skipped}
        for s in self.scores:
            out[f"EM {s.method}, {s.setting}"] = (f"{100 * s.exact_match:.1f}% [{100 * s.exact_match_ci[0]:.1f}, "
                                                  f"{100 * s.exact_match_ci[1]:.1f}]")
        return out

    def plot(self) -> go.Figure:
        """Exact match and containment per decoding and setting, with 95% Wilson intervals."""
        fig = go.Figure()
        for metric, label in (("exact_match", "exact match"), ("contained", "answer contained")):
            for setting in dict.fromkeys(s.setting for s in self.scores):
                rows = [s for s in self.scores if s.setting == setting]
                values = [getattr(s, metric) for s in rows]
                bounds = [getattr(s, f"{metric}_ci") for s in rows]
                fig.add_trace(go.Bar(x=[plot_text(s.method) for s in rows], y=values,
                                     name=plot_text(f"{label}, {setting}"), error_y={
                                         "type": "data", "symmetric": False,
                                         "array": [b[1] - v for b, v in zip(bounds, values)],
                                         "arrayminus": [v - b[0] for b, v in zip(bounds, values)]}))
        fig.update_layout(barmode="group", yaxis={"title": "rate", "range": [0, 1]}, xaxis_title="decoding",
                          title=plot_text(f"QA: {self.model} on {self.data} (n={self.n})"))
        return fig

    def to_frame(self) -> pd.DataFrame:
        """One row per (decoding, setting): exact match and contained with their intervals."""
        return pd.DataFrame([{k: v for k, v in s.to_json().items()} for s in self.scores])

    def table(self) -> str:
        """One line per (decoding, setting)."""
        rows = []
        for s in self.scores:
            rows.append(f"{s.method:<11} {s.setting:<12} n={s.n:<4} EM {100 * s.exact_match:5.1f} "
                        f"[{100 * s.exact_match_ci[0]:.1f}, {100 * s.exact_match_ci[1]:.1f}]  "
                        f"contained {100 * s.contained:5.1f} [{100 * s.contained_ci[0]:.1f}, {100 * s.contained_ci[1]:.1f}]")
        return "\n".join(rows)


def check_decodings(decodings: Sequence[str] | str) -> list[str]:
    items = str_list(decodings, empty=True)
    if not items:
        raise InterlayerError(f"no decodings given; valid choices: {choices(DECODINGS)}")
    for d in items:
        if d not in DECODINGS:
            raise InterlayerError(f"unknown decoding {d!r}; valid choices: {choices(DECODINGS)}")
    return list(dict.fromkeys(items))


def evaluate_qa(model: ModelAdapter, data: str, n: int | None = 100, *,
                decodings: Sequence[str] | str = ("greedy", "lfd", "dola", "lfd-random"),
                options: DecodingOptions | None = None, noise_docs: int = 0, settings: Sequence[str] = SETTINGS,
                chat: ChatMode | bool = "auto", max_new_tokens: int = 16, batch_size: int = 8, seed: int = 0,
                start: int = 0, progress_file: str | Path | None = None, lens: Lens = LOGIT_LENS,
                progress: bool = True) -> QAResult:
    """Answer ``n`` questions of ``data`` with each decoding, closed and open book (see the
    module docstring). ``options`` carries the LFD/DoLa settings (its ``decoding`` is
    replaced per method). ``start``: skip the first records (e.g. a held-out split at the
    end). ``progress_file``: the run's resume journal (:class:`interlayer.io.journal.Journal`,
    one record per finished batch); a journal of other settings is refused."""
    methods = check_decodings(decodings)
    _check_arguments(settings, noise_docs, start)
    loaded = load_qa(data, None if n is None else start + n)
    records = _usable(loaded, data, n, start)
    cloze = data == "known"
    has_passages = not cloze and any(r.passage for r in records)
    wanted = [s for s in settings if s == "closed_book" or has_passages]  # no passages: closed book only
    if not wanted:
        raise InterlayerError(f"{data!r} has no passages, so there is no open-book setting; ask for closed_book")
    base = options or DecodingOptions()
    chat_on = use_chat(model, chat)
    prompts = {s: _prompts(model, records, s, noise_docs, seed, chat_on, cloze) for s in wanted}
    journal = None if progress_file is None else Journal(progress_file, {
        "model": model.name, "data": data, "start": start, "n": len(records), "decodings": methods,
        "options": asdict(base), "noise_docs": noise_docs, "chat": chat_on, "max_new_tokens": max_new_tokens,
        "seed": seed, "batch_size": batch_size, "lens": None if lens is LOGIT_LENS else repr(lens)})
    done = _answer(model, prompts, [(m, s) for m in methods for s in wanted], base, journal,
                   max_new_tokens=max_new_tokens, batch_size=batch_size, lens=lens, progress=progress)
    scores, examples = _score(records, methods, wanted, done, batch_size)
    return QAResult(model.name, data, len(records), loaded.skipped, noise_docs, methods, scores, examples,
                    {"chat": chat_on, "max_new_tokens": max_new_tokens, "seed": seed, "start": start,
                     "settings": wanted, "alpha": base.alpha, "beta": base.beta, "candidates": base.candidates,
                     "fusion": base.fusion, "dola_layers": base.dola_layers})


def _check_arguments(settings: Sequence[str], noise_docs: int, start: int) -> None:
    for s in settings:
        if s not in SETTINGS:
            raise InterlayerError(f"unknown setting {s!r}; valid choices: {choices(SETTINGS)}")
    if not isinstance(noise_docs, int) or noise_docs < 0:
        raise InterlayerError(f"noise_docs must be an integer >= 0, got {noise_docs!r}")
    if not isinstance(start, int) or start < 0:
        raise InterlayerError(f"start must be an integer >= 0, got {start!r}")


def _usable(loaded: QALoad, data: str, n: int | None, start: int) -> list[QARecord]:
    """The records from ``start`` on, with a warning for those skipped or missing."""
    records = loaded.records[start:]
    if not records:
        raise InterlayerError(f"{data!r} has {len(loaded.records)} usable records; start={start} leaves none")
    if loaded.skipped:
        log.warning("%s: %d record(s) skipped: each needs a non-empty 'question' and 'answers' (or 'answer'); "
                    "%d usable record(s) read", data, loaded.skipped, len(loaded.records))
    if n is not None and len(records) < n:
        log.warning("%s: %d question(s) asked for, %d available", data, n, len(records))
    return records


def _answer(model: ModelAdapter, prompts: dict[str, list[str]], jobs: list[tuple[str, str]], base: DecodingOptions,
            journal: Journal | None, *, max_new_tokens: int, batch_size: int, lens: Lens,
            progress: bool) -> dict[str, list[dict[str, Any]]]:
    """Every ``(decoding, setting)`` job's answers, batch by batch, as ``{"decoding|setting|offset":
    [{"text", "layers"}, ...]}``; batches in the journal are reused, new ones journalled."""
    done: dict[str, list[dict[str, Any]]] = {} if journal is None else journal.done()
    total = sum(len(prompts[s]) for _, s in jobs)
    bar = tqdm(total=total, unit="answer", desc="qa", disable=not progress)
    try:
        for method, setting in jobs:
            opts = DecodingOptions(**{**asdict(base), "decoding": method})
            for first in range(0, len(prompts[setting]), batch_size):
                tag = f"{method}|{setting}|{first}"
                if tag not in done:
                    gens = generate(model, prompts[setting][first:first + batch_size], opts,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size, stop_at_newline=True,
                                    lens=lens, progress=False)
                    done[tag] = [{"text": g.text, "layers": [s.layer for s in g.steps]} for g in gens]
                    if journal is not None:
                        journal.append(tag, done[tag])
                bar.update(len(done[tag]))
    finally:
        bar.close()
    return done


def _prompts(model: ModelAdapter, records: list[QARecord], setting: str, noise_docs: int, seed: int, chat: bool,
             cloze: bool) -> list[str]:
    out = []
    for i, record in enumerate(records):
        passages = None
        if setting == "open_book":
            noise = noise_passages(records, i, noise_docs, seed) if noise_docs else []
            passages = with_passages(record, noise, seed, i)
        out.append(qa_prompt(model, record, passages, chat=chat, cloze=cloze))
    return out


def _score(records: list[QARecord], methods: list[str], settings: list[str], done: dict[str, list[dict[str, Any]]],
           batch_size: int) -> tuple[list[MethodScore], list[dict[str, Any]]]:
    scores = []
    answers: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for method in methods:
        for setting in settings:
            outs = [o for start in range(0, len(records), batch_size) for o in done[f"{method}|{setting}|{start}"]]
            answers[(method, setting)] = outs
            scores.append(score(method, setting, [o["text"] for o in outs], records))
    examples = []
    for i, r in enumerate(records):
        examples.append({"question": r.question, "answers": list(r.answers),
                         "predictions": {f"{m}/{s}": first_answer_span(answers[(m, s)][i]["text"])
                                         for m in methods for s in settings},
                         "layers": {f"{m}/{s}": answers[(m, s)][i]["layers"] for m in methods for s in settings
                                    if m != "greedy"}})
    return scores, examples


def write_result(result: QAResult, out: str | Path, progress_file: str | Path | None) -> None:
    """Write the result atomically, then drop the run's resume journal."""
    write_json_atomic(Path(out), result.to_json())
    if progress_file is not None and Path(progress_file).is_file():
        Path(progress_file).unlink()


__all__ = ["CHAT_CHOICES", "QAResult", "check_decodings", "evaluate_qa", "qa_prompt", "use_chat", "write_result"]
