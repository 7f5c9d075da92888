"""Reading record files (a JSON list, or JSON lines): every item with the place it came
from, and errors that name the file and line. Used by every dataset loader."""

from __future__ import annotations

import json
from typing import Any

from ..errors import InterlayerError


def decode_utf8(raw: bytes, where: str) -> str:
    """``raw`` as UTF-8 text; otherwise an error naming ``where`` and the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InterlayerError(f"{where} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at {err.start})") from err


def parse_records(text: str, where: str, *, lines: bool, expect: str) -> list[tuple[str, Any]]:
    """``(location, item)`` for every item of a JSON list (``lines=False``) or of JSON lines
    (blank lines skipped). A malformed line is named ``{where}:{line}``; a JSON file that is
    not a list says it ``must hold a JSON list of {expect}``."""
    if lines:
        out = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"{where}:{number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InterlayerError(f"{where}:{number} is not valid JSON ({err.msg})") from err
        return out
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InterlayerError(f"{where} is not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, list):
        raise InterlayerError(f"{where} must hold a JSON list of {expect}, not a {type(data).__name__}")
    return [(f"{where} item {i}", item) for i, item in enumerate(data)]
