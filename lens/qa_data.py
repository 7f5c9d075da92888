"""Question-answering data for retrieval-augmented evaluation (``interlayer lens qa``).

Dataset names (the packaged subsets, their sources and licences are in
``lens/data/knowledge/``):

* ``nq`` -- 500 NaturalQuestions-Open questions, each with its gold Wikipedia passage
  (Liu et al. 2023's oracle set);
* ``squad`` -- 500 answerable SQuAD 2.0 questions with their context passage;
* ``known`` -- the 1,209 ROME "known facts" cloze prompts (Meng et al. 2022), closed book:
  no passage, the model completes the prompt from memory;
* a path to a ``.json`` file (a list of objects) or a ``.jsonl`` / ``.jsonl.gz`` file (one
  object a line) with ``question``, ``answers`` (a list) or ``answer`` (a string), and
  optionally ``passage`` (or ``context``, or ``ctxs[0].text``), ``title`` and ``id``.

A record without a usable answer (no or empty ``answers``/``answer``, or an empty
question) is skipped and counted in :attr:`QALoad.skipped`, not an error, because public
QA dumps routinely carry a few unanswerable items.

Open-book contexts mix the gold passage with noise passages drawn from the other
records (:func:`noise_passages`, :func:`with_passages`); both draws are seeded by
``(seed, index)`` so one record gets the same context whatever else is evaluated.

No torch here: only the standard library.
"""

from __future__ import annotations

import gzip
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from interlayer.errors import InterlayerError, choices
from interlayer.io.json_records import decode_utf8, parse_records

QA_DATASETS: tuple[str, ...] = ("nq", "squad", "known")
# packaged file of each name, under interlayer.lens's data/knowledge/
_PACKAGED: dict[str, str] = {
    "nq": "nq_open_oracle_500.jsonl.gz",
    "squad": "squad_500.json",
    "known": "known_1000.json",
}
SUFFIXES: tuple[str, ...] = (".json", ".jsonl", ".jsonl.gz")


@dataclass(frozen=True)
class QARecord:
    """One question with its accepted answers and, for open-book data, the gold passage."""

    question: str
    answers: tuple[str, ...]
    passage: str | None = None
    title: str | None = None
    id: str = ""


@dataclass
class QALoad:
    """What :func:`load_qa` read: the usable ``records``, how many were ``skipped`` for
    lacking a question or an answer, and the ``source`` (the dataset name or the path)."""

    records: list[QARecord]
    skipped: int
    source: str


def _read_packaged(name: str) -> tuple[bytes, str]:
    """The bytes and file name of a packaged dataset (works from a wheel as from the tree)."""
    filename = _PACKAGED[name]
    # the same package-data lookup as lens/latent.py (resolves inside an installed wheel too)
    resource = resources.files("interlayer.lens").joinpath(f"data/knowledge/{filename}")
    return resource.read_bytes(), filename


def _suffix(filename: str) -> str:
    """Which of :data:`SUFFIXES` a file name ends with; anything else is an error."""
    lower = filename.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):  # ".jsonl.gz" before ".json"
        if lower.endswith(suffix):
            return suffix
    raise InterlayerError(f"{filename}: unsupported file type; QA files must end in one of {choices(SUFFIXES)}")


def _decode(raw: bytes, where: str, gzipped: bool) -> str:
    """UTF-8 text of a file's bytes, gunzipped first where asked; a bad file is named."""
    if gzipped:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise InterlayerError(f"{where} is not a valid gzip file ({err})") from err
    return decode_utf8(raw, where)


def _items(raw: bytes, where: str, suffix: str) -> list[tuple[str, Any]]:
    """``(location, item)`` for every object of a JSON list or of a JSONL(.gz) file."""
    text = _decode(raw, where, gzipped=suffix == ".jsonl.gz")
    return parse_records(text, where, lines=suffix in (".jsonl", ".jsonl.gz"),
                         expect="objects with 'question' and 'answers'")


def _text(value: Any) -> str | None:
    """A stripped non-empty string, or None for anything else."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _answers(item: dict[str, Any]) -> tuple[str, ...]:
    """The distinct non-empty answers of an item: ``answers`` (list or string), else ``answer``."""
    value = item.get("answers")
    if value is None or value == [] or value == "":
        value = item.get("answer")
    if not isinstance(value, list):
        value = [value]
    out = []
    for answer in value:
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)  # a year or a count written as a number
        if (text := _text(answer)) is not None:
            out.append(text)
    return tuple(dict.fromkeys(out))


def _first_ctx(item: dict[str, Any]) -> dict[str, Any]:
    """The first entry of an item's ``ctxs`` list (lost-in-the-middle format), or an empty dict."""
    ctxs = item.get("ctxs")
    if isinstance(ctxs, list) and ctxs and isinstance(ctxs[0], dict):
        return ctxs[0]
    return {}


def _record(item: dict[str, Any]) -> QARecord | None:
    """The record an item describes, or None when it has no question or no answer."""
    question = _text(item.get("question"))
    answers = _answers(item)
    if question is None or not answers:
        return None
    ctx = _first_ctx(item)
    passage = _text(item.get("passage")) or _text(item.get("context")) or _text(ctx.get("text"))
    title = _text(item.get("title")) or _text(ctx.get("title"))
    raw_id = item.get("id")
    return QARecord(question, answers, passage, title, "" if raw_id is None else str(raw_id))


def _locate(name_or_path: str) -> tuple[bytes, str, str, str]:
    """``(bytes, where, suffix, source)`` of a dataset name or a file path."""
    if name_or_path in QA_DATASETS:
        raw, filename = _read_packaged(name_or_path)
        return raw, f"{name_or_path} ({filename})", _suffix(filename), name_or_path
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise InterlayerError(f"unknown QA dataset {name_or_path!r}: not a file, and not one of {choices(QA_DATASETS)} "
                              f"(a path to a .json list or a .jsonl/.jsonl.gz file with 'question' and 'answers' "
                              "is accepted too)")
    return path.read_bytes(), str(path), _suffix(path.name), str(path)


def load_qa(name_or_path: str, n: int | None = None) -> QALoad:
    """The QA records of a packaged dataset (:data:`QA_DATASETS`) or a file, the first ``n``
    usable ones when ``n`` is given.

    Records without a question or an answer are skipped and counted (only those met before
    the ``n``-th usable record); a file that is not valid JSON, holds a non-object item or no
    usable record at all is an error, as is an unknown name or ``n < 1``.
    """
    if n is not None and n < 1:
        raise InterlayerError(f"n must be at least 1 (or None for every record), got {n}")
    raw, where, suffix, source = _locate(name_or_path)
    records: list[QARecord] = []
    skipped = 0
    for location, item in _items(raw, where, suffix):
        if not isinstance(item, dict):
            raise InterlayerError(f"{location} is a {type(item).__name__}, not an object with 'question' and 'answers'")
        record = _record(item)
        if record is None:
            skipped += 1
            continue
        records.append(record)
        if n is not None and len(records) == n:
            break
    if not records:
        raise InterlayerError(f"{where} holds no usable QA records ({skipped} skipped): each needs a non-empty "
                              "'question' and 'answers' (a list) or 'answer' (a string)")
    return QALoad(records, skipped, source)


def _rng(seed: int, index: int, purpose: str) -> random.Random:
    """A generator fixed by ``(seed, index, purpose)``: string seeds hash with SHA-512, so the
    draws do not depend on PYTHONHASHSEED, on the process or on the other records evaluated."""
    return random.Random(f"{seed}:{index}:{purpose}")


def _check_index(records: Sequence[QARecord], index: int) -> None:
    if not 0 <= index < len(records):
        raise InterlayerError(f"record index {index} is out of range for {len(records)} records "
                              f"(valid: 0 .. {len(records) - 1})")


def noise_passages(records: Sequence[QARecord], index: int, k: int, seed: int = 0) -> list[str]:
    """``k`` distinct passages of *other* records, drawn without replacement, to put beside
    record ``index``'s gold passage as distractors in an open-book context.

    Never the record's own passage, nor any passage with the same text (SQuAD questions share
    contexts), and each text at most once. The draw depends only on ``(seed, index)`` and on
    ``records``, so it is reproducible. Too few other passages for ``k`` is an error.
    """
    _check_index(records, index)
    if k < 0:
        raise InterlayerError(f"k (noise passages per question) must be at least 0, got {k}")
    own = records[index].passage
    pool = list(dict.fromkeys(r.passage for j, r in enumerate(records)
                              if j != index and r.passage is not None and r.passage != own))
    if len(pool) < k:
        raise InterlayerError(f"record {index} needs {k} noise passages but only {len(pool)} other distinct passages "
                              "are available; lower k or load more records with passages")
    return _rng(seed, index, "noise").sample(pool, k)


def with_passages(record: QARecord, noise: Sequence[str], seed: int, index: int) -> list[str]:
    """The passages of an open-book context: the record's gold passage (if it has one) and the
    ``noise`` passages, shuffled in an order fixed by ``(seed, index)``, so that the gold
    passage's position does not give it away and varies across questions."""
    if record.passage is not None and record.passage in noise:
        raise InterlayerError(f"record {index}: a noise passage is the record's own gold passage; "
                              "draw the noise with noise_passages()")
    passages = ([record.passage] if record.passage is not None else []) + list(noise)
    _rng(seed, index, "order").shuffle(passages)
    return passages
