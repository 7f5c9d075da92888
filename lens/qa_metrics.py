"""Scoring for question answering (``interlayer lens qa``): SQuAD exact match, answer
containment and Wilson confidence intervals.

* :func:`exact_match` -- the SQuAD metric (Rajpurkar et al. 2016): the normalised
  prediction equals a normalised gold answer. Strict: "Paris, France" misses "Paris".
* :func:`answer_contained` -- a normalised gold answer occurs inside the normalised
  prediction (the "best subspan EM" of Liu et al. 2023, "Lost in the Middle"). Lenient:
  right for free-form generations that wrap the answer in words.

Both compare :func:`first_answer_span` of a generation: the model's first line, so text it
goes on to generate after the answer (a new question, an explanation) neither earns nor
costs credit.

No torch here: only the standard library.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from interlayer.errors import InterlayerError, choices
from interlayer.intervals import proportion_interval

if TYPE_CHECKING:
    from .qa_data import QARecord

SETTINGS: tuple[str, ...] = ("closed_book", "open_book")
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD's official answer normalisation (evaluate-v2.0.py): lowercase, remove ASCII
    punctuation, remove the articles a/an/the, collapse whitespace -- so that "The Beatles."
    and "beatles" compare equal."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _as_answers(answers: str | Sequence[str]) -> tuple[str, ...]:
    """Answers as a tuple; a lone string is one answer, not a sequence of characters."""
    return (answers,) if isinstance(answers, str) else tuple(answers)


def exact_match(prediction: str, answers: str | Sequence[str]) -> bool:
    """Whether the normalised prediction equals some normalised answer.

    An answer that normalises to the empty string (e.g. "The") never matches, so an empty
    prediction is never counted correct (the official script would count it for such an
    answer; every answer here is meant to be answerable)."""
    guess = normalize_answer(prediction)
    return any(gold and gold == guess for gold in map(normalize_answer, _as_answers(answers)))


def answer_contained(prediction: str, answers: str | Sequence[str]) -> bool:
    """Whether some normalised answer is a substring of the normalised prediction (answers
    that normalise to the empty string never count: they are a substring of everything).

    The match is on characters, not words: "1990" is contained in "1990s"."""
    guess = normalize_answer(prediction)
    return any(gold and gold in guess for gold in map(normalize_answer, _as_answers(answers)))


def first_answer_span(generation: str) -> str:
    """The answer a generation gives: its text up to the first newline, stripped.

    Leading whitespace and blank lines are skipped first, so a generation that opens with a
    newline ("\\nParis\\n...") yields "Paris", not the empty string. This is the span
    :func:`score` compares with :func:`exact_match` and :func:`answer_contained`."""
    return generation.strip().split("\n", 1)[0].strip()


def proportion_ci(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for a binomial proportion ``successes / n``: the toolkit's
    one :func:`interlayer.intervals.proportion_interval` (on scipy). It stays inside
    [0, 1] and does not collapse to a point at 0 or n successes, which matters for the small
    accuracies of small models. ``n == 0`` gives ``(nan, nan)``.
    """
    return proportion_interval(successes, n, level)


def _plain(value: float) -> float | None:
    """A float for JSON: NaN becomes None (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)


@dataclass
class MethodScore:
    """Accuracy of one method in one setting (``closed_book`` or ``open_book``) over ``n``
    questions: exact match and containment rates with their Wilson 95% intervals."""

    method: str
    setting: str
    n: int
    exact_match: float
    exact_match_ci: tuple[float, float]
    contained: float
    contained_ci: tuple[float, float]

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "MethodScore":
        """The score :meth:`to_json` described (null back to NaN)."""

        def num(value: Any) -> float:
            return math.nan if value is None else float(value)

        return cls(payload["method"], payload["setting"], int(payload["n"]), num(payload["exact_match"]),
                   tuple(num(v) for v in payload["exact_match_ci"]), num(payload["contained"]),
                   tuple(num(v) for v in payload["contained_ci"]))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: plain floats and lists (NaN as null)."""
        return {
            "method": self.method,
            "setting": self.setting,
            "n": int(self.n),
            "exact_match": _plain(self.exact_match),
            "exact_match_ci": [_plain(v) for v in self.exact_match_ci],
            "contained": _plain(self.contained),
            "contained_ci": [_plain(v) for v in self.contained_ci],
        }


def score(method: str, setting: str, predictions: Sequence[str], records: Sequence[QARecord]) -> MethodScore:
    """Score generations against the records' answers: exact match and containment of each
    generation's :func:`first_answer_span`, as rates with Wilson 95% intervals.

    ``predictions[i]`` answers ``records[i]``; the two must have the same, non-zero, length."""
    if setting not in SETTINGS:
        raise InterlayerError(f"unknown setting {setting!r}; valid settings: {choices(SETTINGS)}")
    if len(predictions) != len(records):
        raise InterlayerError(f"{len(predictions)} predictions for {len(records)} records; need one per record")
    if not records:
        raise InterlayerError("nothing to score: no predictions")
    spans = [first_answer_span(p) for p in predictions]
    em = sum(exact_match(s, r.answers) for s, r in zip(spans, records))
    contained = sum(answer_contained(s, r.answers) for s, r in zip(spans, records))
    n = len(records)
    return MethodScore(method, setting, n, em / n, proportion_ci(em, n), contained / n, proportion_ci(contained, n))
