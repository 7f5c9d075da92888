"""Options: config fields that document and check themselves.

A config field is declared once with :func:`option`: its ``help`` is both its
documentation and its ``--help`` line, and its bounds and choices are checked the same
way whether it came from the command line or from Python (:func:`check_options`, run
by each config's ``__post_init__``), so bad values fail before any model loads.
A field also names its ``--help`` section (``group``), its spelling on the command line
(``flag``, ``short``), and for text that holds a list or a spec the reader that checks
it (``parse``). Every comma list is read by :func:`comma_list`: :func:`number_list`
(``-4,4``; finite values only), :func:`int_list` and :func:`str_list`, or
``option(items=float)`` for short; :func:`words_or` adds words such as ``all``;
:func:`layer_spec` reads ``6-12``, ``all``, ``-1`` and the site readers
(:func:`~interlayer.model.sites.one_site`, :func:`~interlayer.model.sites.site_list`)
sites. :meth:`Options.parsed` gives a command the value read, an error naming the flag.
The option groups every command composes live here too (:class:`Options`, their base;
:class:`TextOptions`, :class:`PassOptions`, :class:`RunOptions`; the model's
:class:`~interlayer.model.options.ModelOptions` sits with the model), with the field
helpers (:func:`out_option`, :func:`data_option`, ...) whose declaration a command reuses.
This module imports nothing of interlayer but its errors: every config may use it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InterlayerError, LayerIndexError
from .errors import choices as choices_


GROUPS: tuple[str, ...] = ("model", "data", "method", "training", "output")
"""The sections of every command's ``--help``, in order."""

_NAME_GROUPS: dict[str, str] = {
    **dict.fromkeys(("model", "device", "dtype", "trust_remote_code"), "model"),
    **dict.fromkeys(("data", "dataset", "text_field", "label_field", "tokens", "eval_data", "eval_tokens",
                     "context_length", "n", "train_n", "activations", "langs", "pivot", "src", "tgt", "task",
                     "prompt", "sae", "vector", "perplexity_tokens", "shots", "passage", "noise_docs", "targets"),
                    "data"),
    **dict.fromkeys(("steps", "lr", "warmup_steps", "decay_fraction", "beta1", "beta2", "l1_coeff", "l0_coeff",
                     "jumprelu_threshold", "afa_coeff", "auxk_coeff", "aux_k", "dead_after", "b_dec_init",
                     "init_batches", "checkpoint_every", "log_every", "dead_window_tokens", "members_per_pass",
                     "train_memory_mb", "normalization", "authors_exact", "afa_form", "arch", "latents", "k", "grid",
                     "folds"), "training"),
    **dict.fromkeys(("out", "figures", "no_progress", "storage_dtype", "disk_budget_mb", "top_k", "to",
                     "model_hint"), "output"),
}
"""The section of a field whose declaration names none (``group=`` overrides it)."""


def option(default: Any = dataclasses.MISSING, help: str = "", *, choices: tuple[str, ...] | None = None,
           cli: bool = True, required: bool = False, min: float | None = None, above: float | None = None,
           suffixes: tuple[str, ...] | None = None, group: str | None = None, flag: str | None = None,
           short: str | None = None, parse: Callable[[str], Any] | None = None, items: type | None = None,
           repeat: bool = False, deprecated_positional: bool = False, positional: bool = False) -> Any:
    """A config field.

    Args:
        help: one line, shown by ``--help`` and kept as the field's documentation.
        choices: the valid values.
        cli: ``False`` keeps the field out of the command line (Python API only).
        required: the command line requires it (``check_required`` for the API).
        min: the smallest valid value (inclusive); ``above``: exclusive lower bound.
        suffixes: for output paths, the valid file extensions.
        group: the ``--help`` section (one of :data:`GROUPS`; default: by the field's name).
        flag: how the command line spells it when not ``--field-name`` (also its key in a
            ``--config`` file, without the dashes).
        short: a one-letter alias such as ``-o``.
        parse: for a text field holding a list or spec (``"-4,4"``, ``"6-12"``): the
            function that reads it and raises on a bad value, so a bad value is a usage
            error before any model loads; the command reads the value with
            :meth:`Options.parsed`.
        items: for a comma-separated list of ``int``, ``float`` or ``str``: the item type
            (``parse`` becomes :data:`LIST_TYPES`'s reader: ``items=float`` reads ``-4,4``).
        repeat: the flag may be given several times; the field holds a list.
        deprecated_positional: the value may also be given as a positional argument (old
            spelling; a notice says so).
        positional: with ``repeat``, the values may also be given as positional arguments
            (``interlayer report compare A.json B.json``).
    """
    if group is not None and group not in GROUPS:
        raise InterlayerError(f"option group {group!r}: valid choices: {choices_(GROUPS)}")
    if items is not None:
        if items not in LIST_TYPES:
            raise InterlayerError(f"option items={items!r}: valid choices: int, float, str")
        parse = LIST_TYPES[items]
    meta = {"help": help, "choices": choices, "cli": cli, "required": required, "min": min, "above": above,
            "suffixes": suffixes, "group": group, "flag": flag, "short": short, "parse": parse, "repeat": repeat,
            "deprecated_positional": deprecated_positional, "positional": positional}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group_of(field: dataclasses.Field) -> str:
    """The ``--help`` section of a field (see :data:`GROUPS`)."""
    return field.metadata.get("group") or _NAME_GROUPS.get(field.name, "method")


def flag_name(field: dataclasses.Field) -> str:
    """How the command line spells a field: ``--top-k`` (or its declared ``flag``)."""
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def config_key(field: dataclasses.Field) -> str:
    """The field's key in a ``--config`` file: its flag without dashes (``top_k``)."""
    return flag_name(field).lstrip("-").replace("-", "_")


def as_list(value: str | Sequence[str] | None) -> list[str]:
    """A repeatable option's values as a list (one string from Python counts as one)."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def comma_list(text: str | Sequence[Any], item: Callable[[str], Any] = str, *, kind: str = "values",
               example: str = "a,b", empty: bool = False) -> list[Any]:
    """The one reader of a comma-separated list: each item read by ``item`` (``int``,
    ``float``, ``str`` or a reader that raises ``ValueError`` or :class:`InterlayerError`),
    surrounding spaces stripped, blank items skipped (``"3,6,"``); at least one item
    unless ``empty`` (then ``""`` is ``[]``).
    A list or tuple from Python is read item by item. ``kind`` and ``example`` word the
    error (``"{text} must be comma-separated integers, e.g. 3,6,9"``)."""
    parts = [str(p) for p in text] if isinstance(text, (list, tuple)) else str(text).split(",")
    values = []
    for part in parts:
        if not part.strip():
            continue
        try:
            values.append(item(part.strip()))
        except ValueError:
            raise InterlayerError(f"{_shown(text)} must be comma-separated {kind}, e.g. {example}") from None
    if not values and not empty:
        raise InterlayerError(f"{_shown(text)} is empty: give at least one of the {kind}, e.g. {example}")
    return values


def _shown(text: str | Sequence[Any]) -> str:
    return repr(text if isinstance(text, str) else ",".join(map(str, text)))


def number_list(text: str | Sequence[float]) -> list[float]:
    """``"-4,-2,2,4"`` as finite floats (negatives allowed; ``inf``/``nan`` refused)."""
    values = comma_list(text, float, kind="numbers", example="-4,-2,2,4")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        where = "" if len(values) == 1 else f" in {_shown(text)}"
        raise InterlayerError(f"{str(bad[0])!r}{where} is not finite; every value must be a finite number")
    return values


def int_list(text: str | Sequence[int], *, empty: bool = False) -> list[int]:
    """``"3,6,9"`` as integers (negatives allowed; ``empty``: ``""`` is ``[]``)."""
    return comma_list(text, int, kind="integers", example="3,6,9", empty=empty)


def str_list(text: str | Sequence[str], *, empty: bool = False) -> list[str]:
    """``"en,fr"`` as stripped strings (``empty``: ``""`` is ``[]``)."""
    return comma_list(text, str, kind="names", example="en,fr", empty=empty)


def words_or(words: tuple[str, ...], reader: Callable[[str], list[Any]]) -> Callable[[str], str | list[Any]]:
    """A reader of one of ``words`` (``"all"``, ``"high"``) or else a list read by ``reader``:
    ``words_or(("high", "low"), int_list)`` reads ``--dola-layers``."""

    def read(text: str | Sequence[Any]) -> str | list[Any]:
        if isinstance(text, str) and text.strip() in words:
            return text.strip()
        try:
            return reader(text)
        except InterlayerError as err:
            raise InterlayerError(f"{err} (or one of {choices_(words)})") from None

    read.__name__ = f"{'_or_'.join(words)}_or_{reader.__name__}"
    return read


LIST_TYPES: dict[type, Callable[[str], list[Any]]] = {int: int_list, float: number_list, str: str_list}
"""The reader of a comma-separated ``option(items=...)`` field, by item type."""


_LAYER_ITEM = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def layer_spec(text: str) -> str | list[tuple[int, int]]:
    """Read a layer list: ``all``, or comma-separated indices and inclusive ranges, where
    a negative index counts from the end (``6-12``, ``0,3,-1``, ``-4--1``). Returns
    ``"all"`` or the ``(first, last)`` pairs; :func:`resolve_layers` turns them into
    indices once the model's depth is known."""
    if str(text).strip() == "all":
        return "all"
    items = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        match = _LAYER_ITEM.match(part)
        if match is None:
            raise InterlayerError(f"layers {text!r}: give 'all' or comma-separated layers and ranges, "
                                  "e.g. 6-12, 0,3,-1 or -4--1")
        first = int(match.group(1))
        items.append((first, int(match.group(2)) if match.group(2) is not None else first))
    if not items:
        raise InterlayerError(f"layers {text!r}: give 'all' or at least one layer")
    return items


def resolve_layers(text: str, n_layers: int) -> list[int]:
    """The block indices ``0 .. n_layers - 1`` a :func:`layer_spec` names, in order, once each."""
    spec = layer_spec(text)
    if spec == "all":
        return list(range(n_layers))
    out: list[int] = []
    for first, last in spec:
        a, b = (first + n_layers if first < 0 else first), (last + n_layers if last < 0 else last)
        for index in (a, b):
            if not 0 <= index < n_layers:
                raise LayerIndexError(f"layer {first if index == a else last} is out of range for a model of "
                                      f"{n_layers} layers (valid: 0..{n_layers - 1}, or -{n_layers}..-1)")
        if b < a:
            raise InterlayerError(f"layer range {first}-{last} runs backwards ({a} > {b})")
        out.extend(i for i in range(a, b + 1) if i not in out)
    return out


def check_value(field: dataclasses.Field, value: Any) -> None:
    """Check one field's value against its declared bounds and choices."""
    if value is None:
        return
    meta = field.metadata
    name = flag_name(field)
    if meta.get("choices") and value not in meta["choices"]:
        raise InterlayerError(f"{name} {value!r} is not a valid choice; valid choices: {choices_(meta['choices'])}")
    if meta.get("parse") is not None and isinstance(value, str):
        try:
            meta["parse"](value)
        except InterlayerError as err:
            raise InterlayerError(f"{name} {err}") from None
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if meta.get("min") is not None and numeric and value < meta["min"]:
        raise InterlayerError(f"{name} must be at least {meta['min']:g}, got {value!r}")
    if meta.get("above") is not None and numeric and not value > meta["above"]:
        raise InterlayerError(f"{name} must be greater than {meta['above']:g}, got {value!r}")
    if meta.get("suffixes") and isinstance(value, str):
        from pathlib import Path

        if Path(value).suffix.lower() not in meta["suffixes"]:
            raise InterlayerError(f"{name} {value!r}: unknown extension {Path(value).suffix or '(none)'!r}; "
                                  f"valid choices: {choices_(meta['suffixes'])}")


def check_options(config: Any) -> None:
    """Check every field of a config dataclass (bounds, choices, extensions)."""
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name))


def check_required(config: Any) -> None:
    """Raise naming the first required field that is unset (``None``)."""
    for field in dataclasses.fields(config):
        if field.metadata.get("required") and getattr(config, field.name) in (None, []):
            raise InterlayerError(f"{flag_name(field)} is required: {field.metadata.get('help', '')}")


def field_type(config: type, field: dataclasses.Field) -> type:
    """The plain type of a field (``int`` for ``int | None``, ``str`` for ``list[str]`` and
    for ``Literal["auto", "yes", "no"]``), from its resolved annotation."""
    annotation = typing.get_type_hints(config)[field.name]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = [a for a in typing.get_args(annotation) if a is not type(None)][0]
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return type(typing.get_args(annotation)[0])
    return annotation


# ------------------------------------------------------------------ groups
@dataclasses.dataclass
class Options:
    """The base of every option group and command config.

    Making one checks every field's bounds and choices (:func:`check_options`), the
    fields of every group it composes included, once. A config is composed by inheriting
    the groups it takes, the first group's options last in its fields (dataclass order):
    ``class SaturationConfig(RunOptions, LensOptions, PassOptions, TextOptions, ModelOptions)``.
    A group or config with checks of its own overrides ``__post_init__`` and calls
    ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        check_options(self)

    def parsed(self, name: str) -> Any:
        """The value of field ``name`` read by its ``parse`` (``--coefs -4,4`` → ``[-4.0, 4.0]``);
        a list given from Python is read item by item. An error names the flag."""
        field = _field(type(self), name)
        value = getattr(self, name)
        if value is None or field.metadata.get("parse") is None:
            return value
        try:
            return field.metadata["parse"](value)
        except InterlayerError as err:
            raise InterlayerError(f"{flag_name(field)} {err}") from None

    @classmethod
    def variant(cls, name: str, default: Any = dataclasses.MISSING, help: str | None = None, **meta: Any) -> Any:
        """The field ``name`` as this group declares it (its bounds, choices, section,
        flag), with another ``default``, ``help`` or metadata: for a command whose field
        means the same thing in its own words (``--batch-size``: prompts per forward pass)."""
        field = _field(cls, name)
        metadata = {**field.metadata, **({"help": help} if help is not None else {}), **meta}
        return option(field.default if default is dataclasses.MISSING else default, **metadata)


def _field(config: type, name: str) -> dataclasses.Field:
    fields = {f.name: f for f in dataclasses.fields(config)}
    if name not in fields:
        raise InterlayerError(f"{config.__name__} has no option {name!r}; valid options: {choices_(sorted(fields))}")
    return fields[name]


def out_option(help: str, *, required: bool = False, suffixes: tuple[str, ...] | None = None) -> Any:
    """The ``-o/--out`` field of every command that writes."""
    return option(None, help, short="-o", required=required, suffixes=suffixes, group="output")


def figures_option(what: str = "the result's figure") -> Any:
    """The ``--figures F.html`` field: a self-contained plotly page."""
    return option(None, f"also write {what} to this HTML file", suffixes=(".html",), group="output")


def tuned_lens_option() -> Any:
    """The ``--tuned-lens DIR`` field of every command whose function takes ``lens=``
    (``interlayer.lens.config.LensOptions`` holds it, with the lens it names)."""
    return option(None, "decode with this saved tuned lens (a directory from `interlayer lens tune`) instead of the "
                        "logit lens", group="method")


DATA_HELP = ("input text: a .txt (one document per line), .jsonl or .parquet file, or a folder of them (default: the "
             "packaged sample)")


def data_option(help: str = DATA_HELP, *, required: bool = False) -> Any:
    """The ``--data`` field: input text (with ``--text-field``)."""
    return option(None, help, required=required, group="data")


def text_field_option(of: str = "--data") -> Any:
    """The ``--text-field`` field that goes with every ``--data``."""
    return option("text", f"JSON field or parquet column holding the text of {of}", group="data")


CONTEXT_LENGTH = 128
"""Tokens per packed context, BOS included: the default wherever text is packed."""


@dataclasses.dataclass
class TextOptions(Options):
    """Input text, packed into contexts: ``--data``, ``--text-field``, ``--tokens`` and
    ``--context-length``."""

    data: str | None = data_option()
    text_field: str = text_field_option()
    tokens: int = option(4096, "tokens to read from --data (BOS excluded)", min=1)
    context_length: int = option(CONTEXT_LENGTH, "tokens per packed context, BOS included", min=2)


@dataclasses.dataclass
class PassOptions(Options):
    """How the model is run: ``--batch-size`` (contexts per forward pass) and ``--memory-mb``."""

    batch_size: int = option(8, "sequences (packed contexts) per forward pass", min=1)
    memory_mb: float = option(256.0, "device buffer budget, MiB", above=0)


@dataclasses.dataclass
class RunOptions(Options):
    """Where a command writes (``-o/--out``) and whether it shows progress bars."""

    out: str | None = out_option("write the result here")
    no_progress: bool = option(False, "hide the progress bar")


def progress_wanted(no_progress: bool) -> bool:
    """Whether a command shows progress bars: not with ``--no-progress``, and not when
    standard error is not a terminal (a log file, a pipe, CI)."""
    return not no_progress and sys.stderr.isatty()
