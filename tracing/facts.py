"""Facts for causal tracing: a prompt, the subject inside it and the answer's text.

The packaged facts are ROME's ``known_1000`` (Meng et al. 2022; vendored with its
licence in ``interlayer/lens/data/knowledge``). A user's own are a JSONL file with one
``{"prompt": ..., "subject": ..., "target": ...}`` object per line; a bad line is a
one-line error naming the file and the line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from interlayer.errors import InterlayerError
from interlayer.io.json_records import string_records
from interlayer.model.adapter import ModelAdapter

FIELDS = ("prompt", "subject", "target")


@dataclass(frozen=True)
class Fact:
    """One fact: ``prompt`` holds ``subject``; ``target`` is the answer's text (its first
    token, with a leading space, is what the model should predict next)."""

    prompt: str
    subject: str
    target: str

    def __post_init__(self) -> None:
        for name in FIELDS:
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise InterlayerError(f"a fact's {name} must be a non-empty string, got {getattr(self, name)!r}")
        if self.subject not in self.prompt:
            raise InterlayerError(f"the subject {self.subject!r} is not in the prompt {self.prompt!r}")


def packaged_facts(n: int | None = None) -> list[Fact]:
    """The first ``n`` of ROME's ``known_1000`` facts (all 1,209 rows by default)."""
    path = resources.files("interlayer.lens.data.knowledge") / "known_1000.json"
    rows = json.loads(path.read_text(encoding="utf-8"))
    facts = [Fact(r["question"], r["subject"], r["answers"][0]) for r in rows if r["subject"] in r["question"]]
    return facts[:n] if n is not None else facts


def load_facts(path: str | Path, n: int | None = None) -> list[Fact]:
    """The facts of a JSONL file (``prompt``, ``subject``, ``target`` per line; blank
    lines skipped), the first ``n``. Errors name the file and the line."""
    facts = []
    for where, record in string_records(path, FIELDS, flag="--facts", n=n):
        try:
            facts.append(Fact(record["prompt"], record["subject"], record["target"]))
        except InterlayerError as err:
            raise InterlayerError(f"{where}: {err}") from None
    return facts


def subject_positions(model: ModelAdapter, fact: Fact) -> tuple[list[int], list[int], int]:
    """The prompt's token ids (BOS first where the tokenizer adds one), the positions of
    the tokens that overlap the subject's characters, and the target's first token id
    (of ``" " + target``, as the model would continue the prompt)."""
    tok = model.tokenizer
    if tok is None:
        raise InterlayerError("causal tracing needs the model's tokenizer; load the model with one")
    enc = tok(fact.prompt, return_offsets_mapping=True)
    start = fact.prompt.index(fact.subject)
    stop = start + len(fact.subject)
    positions = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < stop and b > start]
    if not positions:
        raise InterlayerError(f"no token of {fact.prompt!r} covers the subject {fact.subject!r}")
    target = tok(" " + fact.target.strip(), add_special_tokens=False)["input_ids"]
    if not target:
        raise InterlayerError(f"the target {fact.target!r} has no tokens")
    return list(enc["input_ids"]), positions, int(target[0])


__all__ = ["FIELDS", "Fact", "load_facts", "packaged_facts", "subject_positions"]
