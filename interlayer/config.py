"""Command configs: one dataclass per command, shared by the CLI and the Python API.

Each field is declared with :func:`~interlayer.options.option`, whose ``help`` text is
both the field's documentation and its ``--help`` line, and whose bounds are checked
when the config is made, so an option exists in one place only. Commands that load a
model share :class:`ModelOptions` and its :meth:`~ModelOptions.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from .activation_cache import CacheOptions
from .distributed import DEFAULT_TIMEOUT_S
from .dtypes import DTYPE_CHOICES
from .loading import DEFAULT_MODEL
from .options import check_options, check_required, option

if TYPE_CHECKING:
    from .adapter import ModelAdapter

__all__ = ["CacheConfig", "InfoConfig", "LogitLensConfig", "ModelOptions", "ModelsConfig", "check_required", "option"]


@dataclass
class ModelOptions:
    """Options every command that loads a model shares."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "weights dtype", choices=DTYPE_CHOICES)
    trust_remote_code: bool = option(False, "let transformers run code shipped with a checkpoint")

    def __post_init__(self) -> None:
        check_options(self)
        parent = getattr(super(), "__post_init__", None)  # a config that also extends other options
        if parent is not None:
            parent()

    def load(self) -> "ModelAdapter":
        """Load the model these options name (see :func:`interlayer.load_model`)."""
        from .loading import load_model

        return load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)


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
    top_k: int = option(1, "tokens shown per cell", min=1)
    memory_mb: float = option(256.0, "bound on decoding working memory, MiB", above=0)
    out: str | None = option(None, "also write the table as CSV (.csv) or JSON (.json) here", suffixes=(".csv", ".json"))
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class CacheConfig(ModelOptions):
    """Cache activations to disk as checksummed shards (resumable)."""

    data: str = option(None, "a .txt (one document per line), .jsonl or .parquet file", required=True)
    sites: str = option("resid_post.*", "comma-separated sites, e.g. resid_post.6,mlp_out.6 or resid_post.*")
    tokens: int = option(100_000, "how many tokens to cache (BOS excluded)", min=1)
    out: str = option(None, "output directory (an unfinished run there is resumed)", required=True)
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    batch_size: int = option(8, "contexts per forward pass", min=1)
    storage_dtype: str = option("float32", "dtype of the stored activations", choices=DTYPE_CHOICES)
    memory_mb: float = option(256.0, "device buffer budget, MiB; also the size of one shard", above=0)
    disk_budget_mb: float | None = option(None, "stop cleanly before the shards exceed this many MiB", above=0)
    text_field: str = option("text", "JSON field or parquet column holding the text")
    seed: int = option(0, "under torchrun: the seed of the split of the token stream among the ranks")
    dist_timeout: float = option(DEFAULT_TIMEOUT_S, "under torchrun: seconds a rank waits at a collective before "
                                                    "every rank stops", above=0)
    no_progress: bool = option(False, "hide the progress bar")

    def cache_options(self) -> CacheOptions:
        """The :class:`~interlayer.activation_cache.CacheOptions` these flags set."""
        shared = {f.name for f in fields(CacheOptions)} & {f.name for f in fields(self)}
        values = {name: getattr(self, name) for name in shared if name != "progress"}
        return CacheOptions(**values, progress=not self.no_progress)
