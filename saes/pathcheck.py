"""Refusing an SAE path before any model loads, in one line (the commands' check)."""

from __future__ import annotations

from typing import Any

from interlayer.errors import InterlayerError

from .loading import detect


def check_sae_path(path: Any, site: str | None = None, flag: str = "--sae") -> None:
    """Refuse a ``path`` holding no SAE in a known format (or several, unnarrowed by
    ``site``) before any model loads, in one line starting with ``flag``: each format
    tried, and why not."""
    try:
        detect(path, site)
    except InterlayerError as err:
        lines = [line.strip().lstrip("- ").strip() for line in str(err).splitlines() if line.strip()]
        message = f"{flag}: {lines[0] if lines else path} {'; '.join(lines[1:])}".rstrip()
        try:
            flat = type(err)(message)
        except TypeError:  # an error class with its own constructor
            flat = InterlayerError(message)
        raise flat from None


__all__ = ["check_sae_path"]
