"""Options: config fields that document and check themselves.

A config field is declared once with :func:`option`: its ``help`` is both its
documentation and its ``--help`` line, and its bounds and choices are checked the same
way whether it came from the command line or from Python (:func:`check_options`, run
by each config's ``__post_init__``), so bad values fail before any model loads.
This module imports nothing of interlayer but its errors: every config may use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .errors import InterlayerError, choices


def option(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
           choices: tuple[str, ...] | None = None, cli: bool = True, required: bool = False,
           min: float | None = None, above: float | None = None, suffixes: tuple[str, ...] | None = None) -> Any:
    """A config field.

    Args:
        help: one line, shown by ``--help`` and kept as the field's documentation.
        positional: a positional CLI argument instead of ``--name``.
        choices: the valid values.
        cli: ``False`` keeps the field out of the command line (Python API only).
        required: the command line requires it (``check_required`` for the API).
        min: the smallest valid value (inclusive); ``above``: exclusive lower bound.
        suffixes: for output paths, the valid file extensions.
    """
    meta = {"help": help, "positional": positional, "choices": choices, "cli": cli, "required": required,
            "min": min, "above": above, "suffixes": suffixes}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(field: dataclasses.Field) -> str:
    """How the command line spells a field: ``--top-k``, or ``model`` for a positional."""
    return field.name if field.metadata.get("positional") else "--" + field.name.replace("_", "-")


def check_value(field: dataclasses.Field, value: Any) -> None:
    """Check one field's value against its declared bounds and choices."""
    if value is None:
        return
    meta = field.metadata
    name = flag_name(field)
    if meta.get("choices") and value not in meta["choices"]:
        raise InterlayerError(f"{name} {value!r} is not a valid choice; valid choices: {choices(meta['choices'])}")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if meta.get("min") is not None and numeric and value < meta["min"]:
        raise InterlayerError(f"{name} must be at least {meta['min']:g}, got {value!r}")
    if meta.get("above") is not None and numeric and not value > meta["above"]:
        raise InterlayerError(f"{name} must be greater than {meta['above']:g}, got {value!r}")
    if meta.get("suffixes") and isinstance(value, str):
        from pathlib import Path

        if Path(value).suffix.lower() not in meta["suffixes"]:
            raise InterlayerError(f"{name} {value!r}: unknown extension {Path(value).suffix or '(none)'!r}; "
                                  f"valid choices: {choices(meta['suffixes'])}")


def check_options(config: Any) -> None:
    """Check every field of a config dataclass (bounds, choices, extensions)."""
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name))


def check_required(config: Any) -> None:
    """Raise naming the first required field that is unset (``None``)."""
    for field in dataclasses.fields(config):
        if field.metadata.get("required") and getattr(config, field.name) is None:
            raise InterlayerError(f"{flag_name(field)} is required: {field.metadata.get('help', '')}")


def field_type(config: type, field: dataclasses.Field) -> type:
    """The plain type of a field (``int`` for ``int | None``), from its resolved annotation."""
    annotation = typing.get_type_hints(config)[field.name]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation
