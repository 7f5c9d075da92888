"""On-disk SAE formats, told apart by their files: interlayer's own (``cfg.json`` +
``sae.safetensors``) and SAELens's (``cfg.json`` + ``sae_weights.safetensors``).
Both :mod:`~interlayer.saes.sae` and :mod:`~interlayer.saes.saelens` ask here, so
neither imports the other to detect a format."""

from __future__ import annotations

from pathlib import Path

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"


def is_interlayer_dir(path: str | Path) -> bool:
    """A directory holding an SAE saved by :meth:`interlayer.saes.SAE.save`."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def is_saelens_dir(path: str | Path) -> bool:
    """A directory holding an SAE in the SAELens on-disk format."""
    path = Path(path)
    return (path / SAELENS_CONFIG).is_file() and (path / SAELENS_WEIGHTS).is_file()
