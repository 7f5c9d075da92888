"""Configs of the probes commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.config import ModelOptions, option


@dataclass
class MexaConfig(ModelOptions):
    """MEXA: cross-lingual alignment of each layer's sentence embeddings with English."""

    langs: str = option("all", "comma-separated languages (e.g. fra_Latn,deu_Latn) or 'all' shipped/found")
    n: int = option(100, "parallel sentences per language (the first n lines)", min=1)
    pooling: str = option("weighted", "sentence embedding: position-weighted mean or last token", choices=("weighted", "last"))
    data: str | None = option(None, "directory of parallel <lang>.devtest or <lang>.txt files (default: packaged FLORES-200)")
    pivot: str = option("eng_Latn", "the pivot language every other one is aligned with")
    out: str | None = option(None, "write the result JSON here", suffixes=(".json",))
    batch_size: int = option(16, "sentences per forward pass", min=1)
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class ConsistencyConfig(ModelOptions):
    """Internal consistency of chain-of-thought answers across layers (Xie et al. 2024)."""

    dataset: str = option("coinflip", "packaged dataset", choices=("coinflip", "prontoqa", "proofwriter", "boolq"))
    paths: int = option(5, "sampled chain-of-thought paths per question (temperature 0.7, top-p 0.95)", min=1)
    n: int = option(20, "questions (the first n of the dataset)", min=2)
    out: str | None = option(None, "write the result JSON here (sampled paths are journalled to OUT.paths.jsonl; a rerun resumes)", suffixes=(".json",))
    max_new_tokens: int = option(96, "tokens per sampled path", min=1)
    seed: int = option(0, "sampling seed")
    tuned_lens: str | None = option(None, "decode the layers with this saved tuned lens")
    no_progress: bool = option(False, "hide the progress bar")
