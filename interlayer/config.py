"""Command configs: one dataclass per command, shared by the CLI and the Python API.

Each field is declared with :func:`option`, whose ``help`` text is both the field's
documentation and its ``--help`` line, so an option exists in one place only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .loading import DEFAULT_MODEL


def option(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
           choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    """A config field. ``positional=True`` makes it a positional CLI argument;
    ``cli=False`` keeps it out of the command line (Python API only)."""
    meta = {"help": help, "positional": positional, "choices": choices, "cli": cli}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass
class ModelOptions:
    """Options every command that loads a model shares."""

    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "weights dtype", choices=("float32", "bfloat16", "float16"))
    trust_remote_code: bool = option(False, "let transformers run code shipped with a checkpoint")


@dataclass
class ModelsConfig:
    """List the embedded model aliases, their sizes and whether each is cached."""

    json: bool = option(False, "print JSON instead of a table")


@dataclass
class InfoConfig(ModelOptions):
    """Print a model's layers, dimensions and hook sites."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id", positional=True)
    json: bool = option(False, "print JSON instead of text")


@dataclass
class LogitLensConfig(ModelOptions):
    """Logit lens: the top tokens of every layer at every position of one prompt."""

    prompt: str = option("The Eiffel Tower is in the city of", "the prompt to decode")
    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    top_k: int = option(1, "tokens shown per cell")
    memory_mb: float = option(256.0, "bound on decoding working memory, MiB")
    out: str | None = option(None, "also write the table as CSV (.csv) or JSON (.json) here")


@dataclass
class CacheConfig(ModelOptions):
    """Cache activations to disk as checksummed shards (resumable)."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    data: str = option(None, "a .txt (one document per line), .jsonl or .parquet file")
    sites: str = option("resid_post.*", "comma-separated sites, e.g. resid_post.6,mlp_out.6 or resid_post.*")
    tokens: int = option(100_000, "how many tokens to cache (BOS excluded)")
    out: str = option(None, "output directory (an unfinished run there is resumed)")
    context_length: int = option(128, "tokens per packed context, BOS included")
    batch_size: int = option(8, "contexts per forward pass")
    storage_dtype: str = option("float32", "dtype of the stored activations", choices=("float32", "bfloat16", "float16"))
    memory_mb: float = option(256.0, "device buffer budget, MiB; also the size of one shard")
    disk_budget_mb: float | None = option(None, "stop cleanly before the shards exceed this many MiB")
    text_field: str = option("text", "JSON field or parquet column holding the text")
    no_progress: bool = option(False, "hide the progress bar")
