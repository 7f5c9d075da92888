"""Command configs: one dataclass per command, shared by the CLI and the Python API.

Each field is declared with :func:`~interlayer.options.option`, whose ``help`` text is
both the field's documentation and its ``--help`` line, and whose bounds are checked
when the config is made, so an option exists in one place only. Commands that load a
model share :class:`ModelOptions` and its :meth:`~ModelOptions.load`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from ..store.cache import CacheOptions
from ..distributed import DEFAULT_TIMEOUT_S
from ..io.dtypes import DTYPE_CHOICES
from ..model.loading import DEFAULT_MODEL
from ..model.sites import site_list
from ..options import check_options, check_required, option

if TYPE_CHECKING:
    from ..model.adapter import ModelAdapter

__all__ = ["CHAT_CHOICES", "CacheConfig", "InfoConfig", "LogitLensConfig", "ModelOptions", "ModelsConfig", "chat_option",
           "check_required", "data_option", "figures_option", "option", "out_option", "text_field_option",
           "tuned_lens_option"]


CHAT_CHOICES = ("auto", "yes", "no")


def chat_option(help: str = "wrap each prompt in the model's chat template: auto (instruct models that have one), "
                             "yes or no") -> Any:
    """The ``--chat {auto,yes,no}`` field of every command that prompts a model."""
    return option("auto", help, choices=CHAT_CHOICES, group="data")


def out_option(help: str, *, required: bool = False, suffixes: tuple[str, ...] | None = None) -> Any:
    """The ``-o/--out`` field of every command that writes."""
    return option(None, help, short="-o", required=required, suffixes=suffixes, group="output")


def figures_option(what: str = "the result's figure") -> Any:
    """The ``--figures F.html`` field: a self-contained plotly page."""
    return option(None, f"also write {what} to this HTML file", suffixes=(".html",), group="output")


def tuned_lens_option() -> Any:
    """The ``--tuned-lens DIR`` field of every command whose function takes ``lens=``."""
    return option(None, "decode with this saved tuned lens (a directory from `interlayer lens tune`) instead of the "
                        "logit lens", group="method")


def data_option(help: str = "input text: a .txt (one document per line), .jsonl or .parquet file, or a folder of "
                            "them (default: the packaged sample)", *, required: bool = False) -> Any:
    """The ``--data`` field: input text (with ``--text-field``)."""
    return option(None, help, required=required, group="data")


def text_field_option(of: str = "--data") -> Any:
    """The ``--text-field`` field that goes with every ``--data``."""
    return option("text", f"JSON field or parquet column holding the text of {of}", group="data")


@dataclass
class ModelOptions:
    """Options every command that loads a model shares."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "weights dtype (default: float32 on every device, so decoded numbers match the "
                                     "model's own; bfloat16 or float16 halve the memory)", choices=DTYPE_CHOICES)
    trust_remote_code: bool = option(False, "let transformers run code shipped with a checkpoint")

    def __post_init__(self) -> None:
        check_options(self)
        parent = getattr(super(), "__post_init__", None)  # a config that also extends other options
        if parent is not None:
            parent()

    def load(self) -> "ModelAdapter":
        """Load the model these options name (see :func:`interlayer.load_model`)."""
        from .registry import started_computing
        from ..model.loading import load_model

        model = load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code)
        started_computing()
        return model


@dataclass
class ModelsConfig:
    """List the embedded model aliases, their sizes and whether each is cached."""


@dataclass
class InfoConfig(ModelOptions):
    """Print a model's layers, dimensions and hook sites."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id (the positional MODEL "
                                       "still works, deprecated)", deprecated_positional=True)


@dataclass
class LogitLensConfig(ModelOptions):
    """Logit lens: the top tokens of every layer at every position of each prompt."""

    prompt: list[str] | None = option(None, "a prompt to decode (default: 'The Eiffel Tower is in the city of')",
                                      repeat=True)
    targets: list[str] | None = option(None, "a string whose first token's probability and rank to report at every "
                                             "layer, e.g. ' Paris'", repeat=True)
    positions: str = option("all", "decode every position (BOS included) or only the last",
                            choices=("all", "last"))
    chat: str = chat_option()
    tuned_lens: str | None = tuned_lens_option()
    top_k: int = option(1, "tokens shown per cell", min=1)
    memory_mb: float = option(256.0, "bound on decoding working memory, MiB", above=0)
    out: str | None = out_option("also write the table as .csv, "
                                 "or the whole result as .json (LogitLensResult.load reads it)",
                                 suffixes=(".csv", ".json"))
    figures: str | None = figures_option("the heatmap of the first prompt")
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class CacheConfig(ModelOptions):
    """Cache activations to disk as checksummed shards (resumable)."""

    data: str = data_option("input text: a .txt (one document per line), .jsonl or .parquet file, or a folder of them",
                            required=True)
    text_field: str = text_field_option()
    sites: str = option("resid_post.*", "comma-separated sites or wildcards, e.g. resid_post.6,mlp_out.6 or "
                                        "resid_post.*", parse=site_list, group="data")
    tokens: int = option(100_000, "how many tokens to cache (BOS excluded)", min=1)
    out: str = out_option("output directory (an unfinished run there is resumed)", required=True)
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    batch_size: int = option(8, "sequences (packed contexts) per forward pass", min=1)
    storage_dtype: str = option("float32", "dtype of the stored activations", choices=DTYPE_CHOICES)
    memory_mb: float = option(256.0, "device buffer budget, MiB; also the size of one shard", above=0)
    disk_budget_mb: float | None = option(None, "stop cleanly before the shards exceed this many MiB", above=0)
    seed: int = option(0, "under torchrun: the seed of the split of the token stream among the ranks")
    dist_timeout: float = option(DEFAULT_TIMEOUT_S, "under torchrun: seconds a rank waits at a collective before "
                                                    "every rank stops", above=0)
    no_progress: bool = option(False, "hide the progress bar")

    def cache_options(self) -> CacheOptions:
        """The :class:`~interlayer.store.cache.CacheOptions` these flags set."""
        shared = {f.name for f in fields(CacheOptions)} & {f.name for f in fields(self)}
        values = {name: getattr(self, name) for name in shared if name != "progress"}
        return CacheOptions(**values, progress=not self.no_progress)
