"""The reasoning datasets of internal consistency (:mod:`interlayer.probes.consistency`):
few-shot chain-of-thought prompts for the packaged questions (``data/reasoning/*.jsonl``),
and where a sampled path's answer starts (the trigger ``So the answer is``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

from interlayer.errors import InterlayerError, choices
from interlayer.io.json_records import json_lines

DATASETS: tuple[str, ...] = ("coinflip", "prontoqa", "proofwriter", "boolq")
LABELS: dict[str, tuple[str, ...]] = {"coinflip": ("yes", "no"), "boolq": ("yes", "no"),
                                      "prontoqa": ("True", "False"), "proofwriter": ("True", "False")}
TRIGGER = "So the answer is"

# Few-shot chain-of-thought demonstrations, written for interlayer.
_COINFLIP_SHOTS = [
    ('A coin is heads up. Maria flips the coin. Tom does not flip the coin. Is the coin still heads up? '
     'Note that "flip" here means "reverse".',
     "The coin starts heads up. Maria flips it, so it is tails up. Tom does not flip it, so it stays tails up.", "no"),
    ('A coin is heads up. Ken does not flip the coin. Lea flips the coin. Omar flips the coin. Is the coin still '
     'heads up? Note that "flip" here means "reverse".',
     "The coin starts heads up. Ken does not flip it, so it stays heads up. Lea flips it, so it is tails up. "
     "Omar flips it, so it is heads up again.", "yes"),
    ('A coin is heads up. Ivy does not flip the coin. Sam does not flip the coin. Is the coin still heads up? '
     'Note that "flip" here means "reverse".',
     "The coin starts heads up. Nobody flips it, so it stays heads up.", "yes"),
]
_BOOLQ_SHOTS = [
    ("The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea.",
     "does the nile flow into the mediterranean sea",
     "The passage says the Nile flows into the Mediterranean Sea.", "yes"),
    ("Penguins are a group of aquatic flightless birds. They live almost exclusively in the Southern Hemisphere.",
     "can penguins fly",
     "The passage says penguins are flightless birds, so they cannot fly.", "no"),
    ("A leap year has 366 days instead of 365, with February 29 added as the extra day.",
     "does a leap year have 365 days",
     "The passage says a leap year has 366 days, not 365.", "no"),
]


@dataclass
class Example:
    """One question: the few-shot prompt (ending with ``A:``) and its gold label."""

    prompt: str
    answer: str


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    path = resources.files("interlayer.probes").joinpath(f"data/reasoning/{name}.jsonl")
    return [item for _, item in json_lines(path.read_text(encoding="utf-8").splitlines(), f"{name}.jsonl")]


def load_examples(dataset: str, n: int | None = None) -> list[Example]:
    """The first ``n`` questions of a packaged dataset, as few-shot CoT prompts."""
    if dataset not in DATASETS:
        raise InterlayerError(f"unknown dataset {dataset!r}; valid datasets: {choices(DATASETS)}")
    if n is not None and (not isinstance(n, int) or n < 2):
        raise InterlayerError(f"n must be an integer of at least 2 (questions), got {n!r}")
    rows = _read_jsonl(dataset)[:n]
    out = []
    for row in rows:
        if row.get("answer") in (None, ""):
            raise InterlayerError(f"{dataset} has an example without a label: {str(row)[:80]}")
        if dataset == "coinflip":
            shots = "".join(f"Q: {q}\nA: {r} {TRIGGER} {a}.\n\n" for q, r, a in _COINFLIP_SHOTS)
            prompt = f"{shots}Q: {row['question']}\nA:"
        elif dataset == "boolq":
            shots = "".join(f"Passage: {p}\nQ: {q}?\nA: {r} {TRIGGER} {a}.\n\n" for p, q, r, a in _BOOLQ_SHOTS)
            prompt = f"{shots}Passage: {row['passage']}\nQ: {row['question']}?\nA:"
        else:
            shots = "".join(f"Q: {e['question']} {e['query']}\nA: {' '.join(e['chain_of_thought'])} {TRIGGER} "
                            f"{e['answer']}.\n\n" for e in row["examples"])
            prompt = f"{shots}Q: {row['context']} {row['question']}\nA:"
        out.append(Example(prompt, str(row["answer"])))
    if len(out) < 2:
        raise InterlayerError(f"{dataset}: need at least 2 examples, got {len(out)}")
    return out


def reasoning_up_to_answer(generated: str, trigger: str = TRIGGER) -> str:
    """The reasoning of a sampled path, cut where the answer would start, ending in ``trigger``.

    Paths that never say the trigger are cut at the end of their answer (a blank line
    or a new ``Q:``) and the trigger is appended.
    """
    at = generated.find(trigger)
    if at >= 0:
        return generated[: at + len(trigger)]
    for stop in ("\n\n", "\nQ:", "\nPassage:"):
        if stop in generated:
            generated = generated[: generated.index(stop)]
    return generated.rstrip() + " " + trigger


__all__ = ["DATASETS", "LABELS", "TRIGGER", "Example", "load_examples", "reasoning_up_to_answer"]
