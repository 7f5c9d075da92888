"""Configs of the probes commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.config import ModelOptions, option
from interlayer.loading import DEFAULT_MODEL


@dataclass
class MexaConfig(ModelOptions):
    """MEXA: cross-lingual alignment of each layer's sentence embeddings with English."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    langs: str = option("all", "comma-separated languages (e.g. fra_Latn,deu_Latn) or 'all' shipped/found")
    n: int = option(100, "parallel sentences per language (the first n lines)")
    pooling: str = option("weighted", "sentence embedding: position-weighted mean or last token", choices=("weighted", "last"))
    data: str | None = option(None, "directory of parallel <lang>.devtest or <lang>.txt files (default: packaged FLORES-200)")
    pivot: str = option("eng_Latn", "the pivot language every other one is aligned with")
    out: str | None = option(None, "write the result JSON here")
    batch_size: int = option(16, "sentences per forward pass")
    no_progress: bool = option(False, "hide the progress bar")
