"""The user's own data for the report's sections, each read and checked before the model
loads (a bad line is one error naming the file and the line):

* ``--prompts FILE``: the logit lens's ``{"prompt", "target"}`` lines;
* ``--word-pairs FILE``: latent language's words, one ``{code: word}`` object per line
  (the first key the source language, the second the target, ``en`` the latent);
* ``--facts FILE``: causal tracing's ``{"prompt", "subject", "target"}`` lines;
* ``--steering-dataset NAME|FILE``: the steering section's contrast pairs (any dataset
  :mod:`interlayer.steering.datasets` names, or its JSON/JSONL files);
* ``--qa-data NAME|FILE``: the IKS section's questions (``nq``, ``squad``, ``known`` or a
  QA records file);
* ``--text FILE``: the sample text of the logit-lens curves, saturation and the SAE panel.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from interlayer.errors import InterlayerError, choices

TEXT_SUFFIXES = (".txt", ".jsonl", ".json")
"""The sample-text files ``--text`` reads (plain text, or JSON records with a ``text`` field)."""


def load_prompts(path: Any) -> list[tuple[str, str]]:
    """The logit lens's ``(prompt, target)`` pairs of a ``--prompts`` JSONL file, one
    ``{"prompt", "target"}`` object per line (errors name the file and the line)."""
    from interlayer.io.json_records import string_records

    return [(r["prompt"], r["target"]) for _, r in string_records(path, ("prompt", "target"), flag="--prompts")]


def load_word_pairs(path: Any) -> tuple[str, str, pd.DataFrame]:
    """``(source, target, words)`` of a ``--word-pairs`` JSONL file: every line one
    ``{code: word}`` object with the same keys, the first the source language, the second
    the target, and ``en`` (the latent language the section tracks). The codes must be
    languages the latent-language analysis knows."""
    import json

    from interlayer.io.json_records import decode_utf8, json_lines
    from interlayer.lens.latent import available_languages

    file = Path(path).expanduser()
    if not file.is_file():
        raise InterlayerError(f"--word-pairs {str(path)!r} does not exist; give a .jsonl file with one object per line, "
                              'e.g. {"fr": "chat", "zh": "猫", "en": "cat"}')
    rows, keys = [], None
    valid = available_languages("translation")
    for where, value in json_lines(decode_utf8(file.read_bytes(), str(file)).splitlines(), str(file),
                                   hint='; each line is one {"<source>": word, "<target>": word, "en": word} object'):
        if not isinstance(value, dict) or not all(isinstance(v, str) and v.strip() for v in value.values()):
            raise InterlayerError(f"{where}: expected an object of language codes to non-empty words, got {json.dumps(value)[:80]}")
        if keys is None:
            keys = list(value)
            unknown = [k for k in keys if k not in valid]
            if len(keys) < 3 or "en" not in keys[2:] or unknown:
                problem = (f"unknown language {unknown[0]!r}; valid codes: {choices(valid)}" if unknown else
                           "needs a source and a target code first, then 'en' (the latent language)")
                raise InterlayerError(f"{where}: {problem}")
        if list(value) != keys:
            raise InterlayerError(f"{where}: keys {list(value)} differ from the first line's {keys}")
        rows.append(value)
    if not rows:
        raise InterlayerError(f"{file} holds no word pairs")
    return keys[0], keys[1], pd.DataFrame(rows, columns=keys)


def check_steering_dataset(name: str) -> str:
    """A ``--steering-dataset`` name or file, checked by loading it (an unknown name lists the valid ones)."""
    from interlayer.steering.datasets import load_pairs

    load_pairs(name)
    return name


def check_qa_data(name: str) -> str:
    """A ``--qa-data`` name or file, checked by loading it."""
    from interlayer.lens.qa_data import load_qa

    if not load_qa(name).records:
        raise InterlayerError(f"--qa-data {name!r} holds no usable question")
    return name


def check_text(path: Any) -> Path:
    """A ``--text`` file: it exists and is plain text or JSON records."""
    file = Path(path).expanduser()
    if file.suffix not in TEXT_SUFFIXES:
        raise InterlayerError(f"--text {str(path)!r}: valid extensions: {choices(TEXT_SUFFIXES)}")
    if not file.is_file():
        raise InterlayerError(f"--text {str(path)!r} does not exist")
    return file


def check_user_data(prompts: Any = None, word_pairs: Any = None, facts: Any = None, steering_dataset: str | None = None,
                    qa_data: str | None = None, text: Any = None) -> None:
    """Read and check every user data option given, before any model loads or computes:
    the first problem is one error naming the option, the file and the line."""
    if prompts is not None:
        load_prompts(prompts)
    if word_pairs is not None:
        load_word_pairs(word_pairs)
    if facts is not None:
        from interlayer.tracing import load_facts

        load_facts(facts)
    if steering_dataset is not None:
        check_steering_dataset(steering_dataset)
    if qa_data is not None:
        check_qa_data(qa_data)
    if text is not None:
        check_text(text)


def fingerprint(name: Any) -> str | None:
    """A user data file's sha256 (a resumed section reruns when its data changed); a
    dataset name is kept as it is."""
    if name is None:
        return None
    file = Path(str(name)).expanduser()
    return hashlib.sha256(file.read_bytes()).hexdigest() if file.is_file() else str(name)


__all__ = ["TEXT_SUFFIXES", "check_qa_data", "check_user_data", "check_steering_dataset", "check_text", "fingerprint", "load_prompts",
           "load_word_pairs"]
