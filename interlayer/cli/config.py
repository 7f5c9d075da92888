"""Command configs of the core commands (``models``, ``info``, ``cache``), shared by the CLI
and the Python API.

Each field is declared with :func:`~interlayer.options.option`, whose ``help`` text is
both the field's documentation and its ``--help`` line, and whose bounds are checked
when the config is made, so an option exists in one place only. Configs compose the
option groups (:class:`~interlayer.model.options.ModelOptions`,
:class:`~interlayer.options.TextOptions`, ...); this module re-exports the groups and
field helpers under their old names.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, fields
from typing import Any

from ..store.cache import CacheOptions
from ..distributed import DEFAULT_TIMEOUT_S
from ..io.dtypes import DTYPE_CHOICES
from ..model.options import ModelOptions
from ..model.sites import site_list
from ..prompts import CHAT_MODES, ChatMode
from ..options import (check_required, data_option, figures_option, option, out_option, text_field_option,
                       tuned_lens_option)

__all__ = ["CHAT_CHOICES", "CacheConfig", "InfoConfig", "ModelOptions", "ModelsConfig", "chat_option",
           "check_required", "data_option", "figures_option", "option", "out_option", "text_field_option",
           "tuned_lens_option"]  # LogitLensConfig: see __getattr__


CHAT_CHOICES: tuple[ChatMode, ...] = CHAT_MODES
"""The values of every ``--chat`` (:data:`interlayer.prompts.CHAT_MODES`)."""


def chat_option(help: str = "wrap each prompt in the model's chat template: auto (instruct models that have one), "
                             "yes or no") -> Any:
    """The ``--chat {auto,yes,no}`` field of every command that prompts a model (a
    :data:`~interlayer.prompts.ChatMode`)."""
    return option("auto", help, choices=CHAT_CHOICES, group="data")


def __getattr__(name: str) -> Any:
    """``LogitLensConfig`` moved to :mod:`interlayer.lens.config` (this name works for one release)."""
    if name == "LogitLensConfig":
        warnings.warn("interlayer.cli.config.LogitLensConfig moved to interlayer.lens.config.LogitLensConfig",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module("interlayer.lens.config").LogitLensConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class ModelsConfig:
    """List the embedded model aliases, their sizes and whether each is cached."""


@dataclass
class InfoConfig(ModelOptions):
    """Print a model's layers, dimensions and hook sites."""

    model: str = ModelOptions.variant("model", help="embedded alias, checkpoint directory or hub id (the positional "
                                                    "MODEL still works, deprecated)", deprecated_positional=True)


@dataclass
class CacheConfig(ModelOptions):
    """Cache activations to disk as checksummed shards (resumable)."""

    data: str = data_option("input text: a .txt (one document per line), .jsonl or .parquet file, or a folder of them",
                            required=True)
    text_field: str = text_field_option()
    sites: str = option("resid_post.*", "comma-separated sites or wildcards, e.g. resid_post.6,mlp_out.6 or "
                                        "resid_post.*", parse=site_list, group="data")
    tokens: int = CacheOptions.variant("tokens")
    out: str = out_option("output directory (an unfinished run there is resumed)", required=True)
    context_length: int = CacheOptions.variant("context_length")
    batch_size: int = CacheOptions.variant("batch_size")
    storage_dtype: str = CacheOptions.variant("storage_dtype", help="dtype of the stored activations ('model': the model's "
                                              "own; the manifest records the dtype itself)",
                                              choices=("model", *DTYPE_CHOICES))
    memory_mb: float = CacheOptions.variant("memory_mb")
    disk_budget_mb: float | None = CacheOptions.variant("disk_budget_mb")
    seed: int = CacheOptions.variant("seed")
    dist_timeout: float = option(DEFAULT_TIMEOUT_S, "under torchrun: seconds a rank waits at a collective before "
                                                    "every rank stops", above=0)
    no_progress: bool = option(False, "hide the progress bar")

    def cache_options(self) -> CacheOptions:
        """The :class:`~interlayer.store.cache.CacheOptions` these flags set."""
        shared = {f.name for f in fields(CacheOptions)} & {f.name for f in fields(self)}
        values = {name: getattr(self, name) for name in shared if name != "progress"}
        return CacheOptions(**values, progress=not self.no_progress)
