"""interlayer's own SAE format (:meth:`interlayer.saes.SAE.save`): ``cfg.json`` with
``"format": 1`` plus ``sae.safetensors``. sparsify uses the same two file names, so the
match reads the config."""

from __future__ import annotations

import json
from pathlib import Path

from . import CONFIG, FORMAT, WEIGHTS
from .base import Entry, Reader, origin


def match(path: Path) -> str | None:
    """``None`` for a folder holding an interlayer SAE, else why not."""
    if not path.is_dir():
        return "not a folder"
    missing = [name for name in (CONFIG, WEIGHTS) if not (path / name).is_file()]
    if missing:
        return f"no {' or '.join(missing)}"
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


def entries(path: Path) -> list[Entry]:
    """interlayer SAEs in the folders below ``path`` (a sweep's output: one per member)."""
    if not path.is_dir():
        return []
    found = []
    for cfg in sorted(path.glob(f"*/{CONFIG}")) + sorted(path.glob(f"*/*/{CONFIG}")):
        if match(cfg.parent) is None:
            try:
                site = json.loads(cfg.read_text(encoding="utf-8")).get("site")
            except (OSError, ValueError):
                site = None
            found.append(Entry(cfg.parent, site, str(cfg.parent.relative_to(path))))
    return found


READERS = [Reader("interlayer", f"{CONFIG} (with \"format\": {FORMAT}) + {WEIGHTS}", match, read, entries, priority=0)]
