"""Reading record files (a JSON list, or JSON lines): every item with the place it came
from, and errors that name the file and line. Every JSON-lines reader goes through
:func:`json_lines`: the dataset loaders, the store's ``.jsonl`` inputs, the packaged data
and the resume journals (:mod:`interlayer.io.journal`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ..errors import InterlayerError


def decode_utf8(raw: bytes, where: str) -> str:
    """``raw`` as UTF-8 text; otherwise an error naming ``where`` and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InterlayerError(f"{where} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at {err.start})") from err


def json_lines(lines: Iterable[str], where: str, *, hint: str = "") -> Iterator[tuple[str, Any]]:
    """``(f"{where}:{line}", item)`` for every non-blank line of JSON lines, read lazily (a
    file handle streams). A malformed line is an error naming ``{where}:{line}`` and the
    column, followed by ``hint`` (what each line should hold)."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{where}:{number}", json.loads(line)
        except json.JSONDecodeError as err:
            raise InterlayerError(f"{where}:{number} is not valid JSON ({err.msg} at column {err.colno}){hint}") from err


def parse_records(text: str, where: str, *, lines: bool, expect: str) -> list[tuple[str, Any]]:
    """``(location, item)`` for every item of a JSON list (``lines=False``) or of JSON lines
    (blank lines skipped). A malformed line is named ``{where}:{line}``; a JSON file that is
    not a list says it ``must hold a JSON list of {expect}``."""
    if lines:
        return list(json_lines(text.splitlines(), where))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InterlayerError(f"{where} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, list):
        raise InterlayerError(f"{where} must hold a JSON list of {expect}, not a {type(data).__name__}")
    return [(f"{where} item {i}", item) for i, item in enumerate(data)]


def string_records(path: Any, fields: Sequence[str], *, flag: str,
                   n: int | None = None) -> list[tuple[str, dict[str, str]]]:
    """``(FILE:LINE, record)`` for the first ``n`` records (all by default) of a user's
    JSON-lines file, each a dict of ``fields`` that must all be non-empty strings (causal tracing's ``--facts``, the
    report's ``--prompts``). Every problem is one error ``FILE:LINE: ...``; ``flag`` names
    the option for a missing file."""
    from pathlib import Path

    file = Path(path).expanduser()
    needs = ", ".join(fields)
    if not file.is_file():
        raise InterlayerError(f"{flag} {str(path)!r} does not exist; give a .jsonl file with one {{{needs}}} object "
                              "per line")
    records: list[tuple[str, dict[str, str]]] = []
    for where, value in json_lines(decode_utf8(file.read_bytes(), str(file)).splitlines(), str(file),
                                   hint=f"; each line is one {{{needs}}} object"):
        if not isinstance(value, dict):
            raise InterlayerError(f"{where}: expected a JSON object with {needs}, got {type(value).__name__}")
        missing = [f for f in fields if f not in value]
        if missing:
            raise InterlayerError(f"{where}: missing field {missing[0]!r} (each line needs {needs})")
        bad = [f for f in fields if not isinstance(value[f], str) or not value[f].strip()]
        if bad:
            raise InterlayerError(f"{where}: field {bad[0]!r} must be a non-empty string, got {value[bad[0]]!r}")
        records.append((where, {f: value[f] for f in fields}))
        if n is not None and len(records) == n:
            break
    if not records:
        raise InterlayerError(f"{file} holds no records; {flag} takes one {{{needs}}} object per line")
    return records
