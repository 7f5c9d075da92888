"""interlayer's own SAE format (:meth:`interlayer.saes.SAE.save`): ``cfg.json`` with
``"format": 1`` plus ``sae.safetensors``. sparsify uses the same two file names, so the
match reads the config."""

from __future__ import annotations

import json
from pathlib import Path

from . import CONFIG, FORMAT, WEIGHTS
from .base import Entry, Reader, find_entries, missing_files, origin


def match(path: Path) -> str | None:
    """``None`` for a folder holding an interlayer SAE, else why not."""
    why = missing_files(path, (CONFIG, WEIGHTS))
    if why:
        return why
    try:
        data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{CONFIG} is not valid JSON"
    if isinstance(data, dict) and "format" in data and data["format"] != FORMAT:
        return f"{CONFIG} is not an interlayer SAE config of format {FORMAT} (its 'format' is {data['format']!r})"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return f"{CONFIG} has no \"format\": {FORMAT}"
    return None


def read(path: Path):
    """The SAE saved in ``path`` (its ``origin`` kept if it was loaded from elsewhere first)."""
    from ..sae import SAE

    sae = SAE.load(path)
    if sae.cfg.origin is None:
        sae.cfg.origin = origin("interlayer", path)
    return sae


def _site(folder: Path) -> str | None:
    try:
        return json.loads((folder / CONFIG).read_text(encoding="utf-8")).get("site")
    except (OSError, ValueError):
        return None


def entries(path: Path) -> list[Entry]:
    """interlayer SAEs in the folders below ``path`` (a sweep's output: one per member)."""
    return find_entries(path, CONFIG, 2, lambda folder: match(folder) is None, _site)


READERS = [Reader("interlayer", f"{CONFIG} (with \"format\": {FORMAT}) + {WEIGHTS}", match, read, entries, priority=0)]
