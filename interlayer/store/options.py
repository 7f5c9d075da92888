"""The options of a store call, and the checks of its arguments.

:class:`CollectOptions` holds the keyword arguments of :func:`~interlayer.collect` and
:func:`~interlayer.stream`; :class:`~interlayer.store.cache.CacheOptions` those of
:func:`~interlayer.cache`. Both declare their fields with
:func:`~interlayer.options.option` (bounds and choices in the declaration) and share
:class:`KeywordOptions`: ``from_kwargs``, the resolution of ``options=`` against keywords,
and the deprecated ``dtype`` name. Errors name the Python keyword (``batch_size``), as a
store call spells it.
"""

from __future__ import annotations

import dataclasses
import os
import reprlib
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from ..errors import InterlayerError, choices
from ..io.dtypes import dtype_name, parse_dtype
from ..model.sites import Site
from ..options import option
from .selection import POOLED, SELECTIONS, check_selection

OUTPUT_DEVICES = ("cpu", "model")
"""Where :func:`~interlayer.stream` and :func:`~interlayer.collect` put the rows they return."""

MODEL_DTYPE = "model"
"""The default ``storage_dtype``: store rows in the model's own dtype (bfloat16 rows for a bfloat16
model: no cast, half the bytes of float32), see :func:`resolve_storage_dtype`."""

__all__ = ["CollectOptions", "KeywordOptions", "MODEL_DTYPE", "OUTPUT_DEVICES", "check_inputs", "check_keywords",
           "check_sites", "check_storage_dtype", "renamed_dtype", "resolve_storage_dtype", "storage_dtype_name"]

KeywordOptionsT = TypeVar("KeywordOptionsT", bound="KeywordOptions")


class KeywordOptions:
    """What the store's option dataclasses share: building them from a call's keyword
    arguments, and the deprecated ``dtype`` name of ``storage_dtype`` (one release)."""

    @property
    def dtype(self) -> str:
        """Deprecated name of ``storage_dtype`` (one release)."""
        warnings.warn(f"{type(self).__name__}.dtype is renamed storage_dtype", DeprecationWarning, stacklevel=2)
        return self.storage_dtype  # type: ignore[attr-defined]

    @classmethod
    def from_kwargs(cls: type[KeywordOptionsT], options: Mapping[str, Any], stacklevel: int = 4) -> KeywordOptionsT:
        """Options from keyword arguments; an unknown keyword names the valid ones.
        ``dtype=`` is still read as ``storage_dtype=``, with a DeprecationWarning."""
        default = next((f.default for f in dataclasses.fields(cls) if f.name == "storage_dtype"), None)  # type: ignore[arg-type]
        options = renamed_dtype(dict(options), stacklevel, default)
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(options) - names
        if unknown:
            raise InterlayerError(f"unknown option(s) {choices(sorted(unknown))}; valid options: {choices(sorted(names))}")
        return cls(**options)

    @classmethod
    def of_call(cls: type[KeywordOptionsT], options: Any, keywords: Mapping[str, Any]) -> KeywordOptionsT:
        """The options of a call: ``options=`` as given, or built from the call's
        ``keywords`` (its fields, and a deprecated ``dtype``); both at once is an error."""
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        if options is None:
            return cls.from_kwargs({n: keywords[n] for n in names if n in keywords} | {"dtype": keywords.get("dtype")},
                                   stacklevel=5)
        if not isinstance(options, cls):
            raise InterlayerError(f"options must be a {cls.__name__}, got {type(options).__name__}")
        defaults = cls()
        changed = [n for n in names if n in keywords and _differs(keywords[n], getattr(defaults, n))]
        changed += ["dtype"] if keywords.get("dtype") is not None else []
        if changed:
            raise InterlayerError(f"give the options either as options={cls.__name__}(...) or as keywords, not both "
                                  f"(also given: {choices(changed)})")
        return options


def _differs(value: Any, default: Any) -> bool:
    """Whether a keyword was given other than its default (the defaults are scalars or None,
    so a list or tensor is never compared elementwise)."""
    return value is not default and (type(value) is not type(default) or value != default)


def renamed_dtype(options: dict[str, Any], stacklevel: int = 4, default: Any = "float32") -> dict[str, Any]:
    """``options`` with a deprecated ``dtype`` moved to ``storage_dtype`` (a DeprecationWarning);
    both at once (a ``storage_dtype`` other than its ``default``) is an error."""
    if options.get("dtype") is None:
        options.pop("dtype", None)
        return options
    if options.get("storage_dtype") not in (None, default):
        raise InterlayerError("give storage_dtype= only (dtype= is its deprecated name), not both")
    warnings.warn("dtype= is renamed storage_dtype= (the dtype the activations are stored in); "
                  "the old keyword goes in the next release", DeprecationWarning, stacklevel=stacklevel)
    options["storage_dtype"] = options.pop("dtype")
    return options


def check_storage_dtype(name: str | torch.dtype) -> None:
    """Refuse a storage dtype that is neither :data:`MODEL_DTYPE` nor one of the float dtypes."""
    if name != MODEL_DTYPE:
        parse_dtype(name, "storage dtype")


def resolve_storage_dtype(name: str | torch.dtype, model_dtype: torch.dtype, pooled: bool = False) -> torch.dtype:
    """The torch dtype rows are stored in: ``name`` (float32, bfloat16, float16 or their short
    names), or for :data:`MODEL_DTYPE` (``"model"``) the model's weights dtype ``model_dtype``:
    the activations' own dtype, so token rows are stored as produced. Pooled rows (``pooled``:
    ``mean``, ``weighted_mean``) are means computed in float32, one row per sequence, and stay
    float32 under ``"model"``, as do rows of a model in a dtype the store does not keep (float64)."""
    if name != MODEL_DTYPE:
        return parse_dtype(name, "storage dtype")
    if pooled or model_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return torch.float32
    return model_dtype


def storage_dtype_name(dtype: str | torch.dtype) -> str:
    """The canonical name of a storage dtype (``"bf16"`` -> ``"bfloat16"``)."""
    return dtype_name(parse_dtype(dtype, "storage dtype"))


def check_keywords(config: Any) -> None:
    """Check the declared bounds and choices of a store option dataclass, naming each
    field as its keyword: a field with ``min`` holds an integer (``bool`` is not one),
    a field with ``above`` a number greater than it; ``None`` is always allowed."""
    for field in dataclasses.fields(config):
        value, meta, name = getattr(config, field.name), field.metadata, field.name
        if value is None:
            continue
        if meta.get("choices") and value not in meta["choices"]:
            raise InterlayerError(f"{name}={value!r}; valid choices: {choices(meta['choices'])}")
        low = meta.get("min")
        if low is not None and (not isinstance(value, int) or isinstance(value, bool) or value < low):
            raise InterlayerError(f"{name} must be an integer of at least {low:g}, got {value!r}")
        if meta.get("above") is not None and not value > meta["above"]:
            raise InterlayerError(f"{name} must be greater than {meta['above']:g}, got {value!r}")


@dataclass
class CollectOptions(KeywordOptions):
    """Options of :func:`~interlayer.collect` and :func:`~interlayer.stream`."""

    select: str = option("tokens", "which rows to keep: tokens, last, positions, mean or weighted_mean",
                         choices=SELECTIONS)
    positions: Sequence[Sequence[int]] | None = option(None, "for select='positions': the positions to keep in each "
                                                             "input sequence")
    batch_size: int = option(8, "sequences per forward pass", min=1)
    context_length: int | None = option(None, "pack documents into contexts of this many tokens (BOS first); None "
                                              "keeps each input as one sequence", min=2)
    padding_side: str = option("right", "pad on the 'left' or the 'right'; results are the same either way",
                               choices=("left", "right"))
    storage_dtype: str = option(MODEL_DTYPE, "dtype the rows are stored in: 'model' (the model's own dtype, e.g. "
                                             "bfloat16 for a bfloat16 model, float32 for a float32 one; pooled means "
                                             "stay float32), float32, bfloat16 or float16 (or bf16, fp16)")
    memory_mb: float = option(256.0, "budget for the preallocated device buffers, MiB", above=0)
    rows_per_chunk: int | None = option(None, "chunks of at most this many rows instead of what memory_mb holds "
                                              "(whole batches, at least one): exactly this many when every batch "
                                              "has the same rows, as full packed contexts do", min=1)
    output_device: str = option("cpu", "where the yielded rows live: 'cpu' (host memory: from a CUDA model copied "
                                       "asynchronously into pinned memory, see interlayer.store.host; on a CPU model "
                                       "the chunk takes its buffers over, uncopied) or 'model' (left on the model's "
                                       "device, uncopied: each chunk takes "
                                       "its buffers over, so up to two chunks' buffers live there at once). On a GPU, "
                                       "'model' spares a copy to the host and back for consumers that work on the GPU",
                                choices=OUTPUT_DEVICES)
    batch_tokens: int | None = option(None, "unpacked sequences: at most this many padded tokens (sequences x "
                                            "longest) in one forward pass, a longer batch split in order; default: "
                                            "what 256 MiB holds of the model's per-token forward activations "
                                            "(interlayer.store.batching)", min=1)
    max_length: int | None = option(None, "truncate longer sequences (default: the model's context), with a warning",
                                    min=1)
    text_field: str = option("text", "column or JSON field holding the text")
    logits: bool = option(False, "also keep the final logits of the selected rows (not for pooled selections)")
    edits: Mapping[str, Any] | None = option(None, "writes during the passes: {site: fn} (fn([batch, seq, d]) -> "
                                                   "replacement) or {site: Edit(fn, rows='tokens')}; reads at or after "
                                                   "an edited site see its effect")
    progress: bool = option(True, "show a progress bar")
    limit: int | None = option(None, "use at most this many input sequences (or packed contexts)", min=1)
    tokens: int | None = option(None, "packed contexts only: run the contexts that hold this many tokens, counted "
                                      "as the store packs them (contexts_for_tokens: BOS excluded); the last context "
                                      "is whole, so the rows may hold a few more", min=1)
    skip: int = option(0, "packed contexts only: skip this many contexts without running the model (to resume)", min=0)
    keep_batches: Callable[[int], bool] | None = option(
        None, "packed contexts only: run only the batches j (contexts j * batch_size to (j + 1) * batch_size - 1 of "
              "the stream, counted before skip) where this is true; the others are tokenized but never run (a rank's "
              "share of a distributed cache)")
    check_padding: bool = option(True, "on the first batch with padding, run one padded sequence alone and raise if "
                                       "its rows differ from the batched ones (interlayer.store.guards)")
    check_edits: bool = option(True, "check each edit's output for NaN/inf (an error naming the site), warn for an "
                                     "edit that changes nothing, and report edit_effects (interlayer.store.write_gates)")
    logit_effects: bool = option(False, "with edits: also measure their effect at the logits on the first batch, "
                                        "against a clean control pass (two extra passes of that batch)")

    def __post_init__(self) -> None:
        check_selection(self.select)
        check_keywords(self)
        check_storage_dtype(self.storage_dtype)
        if self.logits and self.select in POOLED:
            raise InterlayerError(f"logits=True needs a token selection, not {self.select!r}")
        if self.keep_batches is not None and (self.context_length is None or self.skip % self.batch_size):
            raise InterlayerError("keep_batches needs packed contexts (context_length) and a skip that is a whole "
                                  "number of batches")
        if self.skip and self.context_length is None:
            raise InterlayerError("skip needs packed contexts (context_length); for unpacked inputs pass the remaining inputs")
        if self.tokens is not None and (self.context_length is None or self.limit is not None):
            raise InterlayerError("tokens= needs packed contexts (context_length) and no limit= (tokens= sets the "
                                  "number of contexts)")


def check_inputs(inputs: Any) -> None:
    """Refuse, before any model pass, inputs that are not one of the accepted forms
    (a ``None``, a dict, a number, a list holding ``None`` or dicts): a one-line
    :class:`~interlayer.errors.InterlayerError` naming the problem and the valid forms."""
    forms = "a list of strings, a list of token-id lists, a [n, seq] token tensor, a .txt/.jsonl/.parquet path or a datasets.Dataset"
    if inputs is None:
        raise InterlayerError(f"inputs is None; give {forms}")
    if isinstance(inputs, Mapping):
        raise InterlayerError(f"inputs is a {type(inputs).__name__} (its keys would be read as the texts); give {forms}")
    if isinstance(inputs, (str, os.PathLike, torch.Tensor)) or hasattr(inputs, "column_names"):
        return
    if isinstance(inputs, (bytes, bytearray)) or not isinstance(inputs, Iterable):
        raise InterlayerError(f"inputs of type {type(inputs).__name__} are not supported; give {forms}")
    if isinstance(inputs, Sequence):
        for number, item in enumerate(inputs):
            if isinstance(item, str):
                continue
            if isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
                if set(map(type, item)) <= {int}:  # the common case, checked at C speed
                    continue
                bad = next((t for t in item if not isinstance(t, int) or isinstance(t, bool)), None)
                if bad is None:
                    continue
                raise InterlayerError(f"input {number} holds {bad!r} of type {type(bad).__name__}; "
                                      "token ids must be Python ints")
            raise InterlayerError(f"input {number} is {reprlib.repr(item)} ({type(item).__name__}); each input must be "
                                  "a string or a list of token ids")


def check_sites(sites: Any, allow_empty: bool = False) -> None:
    """Refuse a ``sites`` argument of the wrong type (``sites=3``, ``None``, a list holding
    a number) with a one-line error naming the valid forms, before any model pass."""
    forms = "a site name such as 'resid_post.6', a wildcard such as 'resid_post.*', or a list of them"
    if isinstance(sites, (str, Site)):
        return
    if sites is None or isinstance(sites, Mapping) or not isinstance(sites, Sequence):
        if allow_empty and sites is None:
            return
        raise InterlayerError(f"sites is {reprlib.repr(sites)} ({type(sites).__name__}); give {forms}")
    for item in sites:
        if not isinstance(item, (str, Site)):
            raise InterlayerError(f"sites holds {item!r} of type {type(item).__name__}; give {forms}")
