"""SAELens's on-disk format (``cfg.json`` + ``sae_weights.safetensors``), one SAE per
folder, and a local snapshot of a SAELens release repository (one such folder per SAE,
at any depth up to three). The conversion itself is :mod:`interlayer.saes.saelens`."""

from __future__ import annotations

import json
from pathlib import Path

from . import SAELENS_CONFIG, SAELENS_WEIGHTS
from .base import Entry, Reader, find_entries, missing_files, origin


def match(path: Path) -> str | None:
    """``None`` for a folder holding one SAELens SAE, else why not."""
    why = missing_files(path, (SAELENS_CONFIG, SAELENS_WEIGHTS))
    if why:
        return why
    try:
        data = json.loads((path / SAELENS_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{SAELENS_CONFIG} is not valid JSON"
    if not isinstance(data, dict) or "d_sae" not in data or "d_in" not in data:
        return f"{SAELENS_CONFIG} has no d_in/d_sae"
    return None


def read(path: Path):
    """The SAE in ``path``, converted (:func:`~interlayer.saes.from_saelens`)."""
    from ..saelens import from_saelens

    config = json.loads((path / SAELENS_CONFIG).read_text(encoding="utf-8"))
    sae = from_saelens(path)
    meta = config.get("metadata") or {}
    sae.cfg.origin = origin("saelens", path, hook_name=meta.get("hook_name") or config.get("hook_name"),
                            model_name=meta.get("model_name") or config.get("model_name"), dtype=config.get("dtype"))
    return sae


def entries(path: Path) -> list[Entry]:
    """The SAELens SAEs in a release snapshot under ``path`` (folders up to three deep)."""
    return find_entries(path, SAELENS_CONFIG, 3, lambda folder: match(folder) is None,
                        lambda folder: _site(folder / SAELENS_CONFIG))


def _site(cfg: Path) -> str | None:
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta = data.get("metadata") or {}
    return meta.get("interlayer_site") or meta.get("hook_name") or data.get("hook_name")


READERS = [Reader("saelens", f"{SAELENS_CONFIG} (with d_in, d_sae) + {SAELENS_WEIGHTS}", match, read, entries,
                  priority=10)]
