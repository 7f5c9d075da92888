"""Contrastive steering data: questions answered the matching and the non-matching way.

Dataset names:

* ``caa:<behaviour>`` -- the CAA A/B sets (Rimsky et al. 2024): ``coordinate-other-ais``,
  ``corrigible-neutral-HHH``, ``hallucination``, ``myopic-reward``, ``refusal``,
  ``survival-instinct``, ``sycophancy``; ``split="generate"`` (vectors) or ``"test"``
  (evaluation, CAA's held-out A/B set);
* ``persona:<trait>`` -- Anthropic's Big Five persona statements (`` Yes``/`` No``);
* ``power-seeking`` -- Anthropic's power-seeking inclination A/B items, labels
  normalised so that the matching answer is always the power-seeking one;
* a path to a JSON list or JSONL file of objects with ``question``,
  ``answer_matching_behavior`` and ``answer_not_matching_behavior``.

Datasets without a test set of their own (persona, power-seeking, files) are split
by position: every third item (index 2, 5, 8, ...) is ``"test"``, the others ``"generate"``,
so a vector is never evaluated on the items it was trained on.

The packaged subsets, their sources and licences are in ``steering/data/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from interlayer.errors import InterlayerError, choices
from interlayer.io.json_records import decode_utf8, parse_records

CAA_BEHAVIOURS: tuple[str, ...] = ("coordinate-other-ais", "corrigible-neutral-HHH", "hallucination", "myopic-reward",
                                   "refusal", "survival-instinct", "sycophancy")
TRAITS: tuple[str, ...] = ("agreeableness", "conscientiousness", "extraversion", "neuroticism", "openness")
SPLITS: tuple[str, ...] = ("generate", "test")
FIELDS: tuple[str, ...] = ("question", "answer_matching_behavior", "answer_not_matching_behavior")


@dataclass(frozen=True)
class ContrastPair:
    """One question with the answer that shows the behaviour and the one that does not."""

    question: str
    matching: str
    not_matching: str


def dataset_names() -> list[str]:
    """Every packaged dataset name."""
    return [f"caa:{b}" for b in CAA_BEHAVIOURS] + [f"persona:{t}" for t in TRAITS] + ["power-seeking"]


def _packaged(relative: str) -> Path:
    return Path(str(resources.files("interlayer.steering").joinpath(f"data/{relative}")))


def dataset_path(name: str, split: str = "generate") -> Path:
    """The file behind a dataset name (or the path itself); an unknown name lists the valid ones."""
    if split not in SPLITS:
        raise InterlayerError(f"unknown split {split!r}; valid choices: {choices(SPLITS)}")
    if name.startswith("caa:"):
        behaviour = name[4:]
        if behaviour not in CAA_BEHAVIOURS:
            raise InterlayerError(f"unknown CAA behaviour {behaviour!r}; valid behaviours: {choices(CAA_BEHAVIOURS)}")
        return _packaged(f"caa-{behaviour}.{split}.json")
    if name.startswith("persona:"):
        trait = name[8:]
        if trait not in TRAITS:
            raise InterlayerError(f"unknown persona trait {trait!r}; valid traits: {choices(TRAITS)}")
        return _packaged(f"persona-{trait}.jsonl")
    if name == "power-seeking":
        return _packaged("power_seeking.jsonl")
    path = Path(name).expanduser()
    if not path.is_file():
        raise InterlayerError(f"unknown dataset {name!r}: not a file, and not one of {choices(dataset_names())}")
    return path


def _records(path: Path) -> list[tuple[str, object]]:
    """``(where, record)`` for every item of a JSON list or a JSONL file."""
    text = decode_utf8(path.read_bytes(), str(path))
    return parse_records(text, str(path), lines=path.suffix.lower() == ".jsonl", expect=f"objects with {choices(FIELDS)}")


def load_pairs(name: str, split: str = "generate", n: int | None = None) -> list[ContrastPair]:
    """The contrast pairs of a dataset (the first ``n``), checked: every item has the three
    fields as non-empty strings with two different answers; a bad item is named."""
    if n is not None and n < 1:
        raise InterlayerError(f"n must be at least 1, got {n}")
    path = dataset_path(name, split)
    records = _records(path)
    if not name.startswith("caa:"):  # no test set of its own: every third item is held out
        records = [r for i, r in enumerate(records) if (i % 3 == 2) == (split == "test")]
    pairs = []
    for where, item in records:
        if not isinstance(item, dict):
            raise InterlayerError(f"{where} is a {type(item).__name__}, not an object with {choices(FIELDS)}")
        missing = [f for f in FIELDS if not isinstance(item.get(f), str) or not item[f].strip()]
        if missing:
            raise InterlayerError(f"{where} lacks {choices(missing)} (each must be a non-empty string)")
        if item["answer_matching_behavior"].strip() == item["answer_not_matching_behavior"].strip():
            raise InterlayerError(f"{where} gives the same answer as matching and not matching")
        pairs.append(ContrastPair(item["question"], item["answer_matching_behavior"], item["answer_not_matching_behavior"]))
        if n is not None and len(pairs) == n:
            break
    if not pairs:
        raise InterlayerError(f"{path} holds no contrast pairs")
    return pairs


def check_balance(pairs: Sequence[ContrastPair], tolerance: float = 0.8) -> None:
    """Refuse pairs whose matching answers are (nearly) all the same option: a vector
    trained on them learns "answer A" rather than the behaviour. At most ``tolerance``
    of the pairs may share one matching answer."""
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.matching.strip()] = counts.get(pair.matching.strip(), 0) + 1
    answer, top = max(counts.items(), key=lambda kv: kv[1])
    if len(pairs) >= 4 and top > tolerance * len(pairs):
        raise InterlayerError(f"unbalanced pairs: {top} of {len(pairs)} match with the same answer {answer!r}; "
                              "a vector would learn the answer's position, not the behaviour (balance the answers)")
