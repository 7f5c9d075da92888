"""Error types. Every error is a ``ValueError`` whose message names the bad value
and the valid choices, so callers can catch one family and users can act on the text."""

from __future__ import annotations

from collections.abc import Iterable


class InterlayerError(ValueError):
    """Base class of every error interlayer raises on bad input."""


class UnknownModelError(InterlayerError):
    """A model spec that is neither an embedded alias, a local checkpoint nor a reachable hub id."""


class UnsupportedArchitectureError(InterlayerError):
    """A model whose class has no entry in :mod:`interlayer.model.architectures`."""


class LayerIndexError(InterlayerError, IndexError):
    """A layer index outside ``0 .. n_layers - 1``."""


class UnknownSiteError(InterlayerError):
    """A hook-site name that does not parse or does not exist on this model."""


class CacheCorruptError(InterlayerError):
    """A conversion cache whose files do not match their recorded checksums."""


def choices(values: Iterable[object]) -> str:
    """Format valid choices for an error message: ``'a', 'b', 'c'``."""
    return ", ".join(repr(v) for v in values)
