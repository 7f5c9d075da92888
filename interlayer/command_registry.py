"""The command registry: how a command is declared, and how the parser is built from
the declarations. It imports no command and no method package; command modules
(``interlayer.commands``, ``interlayer.lens.cli``, ...) import it to register
themselves, and :mod:`interlayer.cli` discovers them and dispatches.

A command is ``fn(config) -> exit code`` registered with :func:`command` under a
name (words split by spaces, e.g. ``"lens tune"``) and a config dataclass whose
fields (:func:`~interlayer.options.option`) become its options and their help.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InterlayerError
from .options import check_value, field_type, flag_name

__all__ = ["COMMANDS", "Command", "build_parser", "command", "emit_json", "write_json_output"]


@dataclass(frozen=True)
class Command:
    name: str
    config: type
    run: Callable[[Any], int | None]


COMMANDS: dict[str, Command] = {}


def command(name: str, config: type) -> Callable[[Callable[[Any], int | None]], Callable[[Any], int | None]]:
    """Register ``fn(config) -> exit code`` as the CLI command ``name`` (words split by spaces)."""

    def register(fn: Callable[[Any], int | None]) -> Callable[[Any], int | None]:
        COMMANDS[name] = Command(name, config, fn)
        return fn

    return register


def _parse_as(kind: type, field: dataclasses.Field) -> Callable[[str], Any]:
    """An argparse type that converts, then checks the field's bounds, so a bad value
    is a usage error before anything runs."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        try:
            check_value(field, value)
        except InterlayerError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(flag_name(field) + " ")) from None
        return value

    convert.__name__ = kind.__name__
    return convert


def _add_options(parser: argparse.ArgumentParser, config: type) -> None:
    for field in dataclasses.fields(config):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        kind = field_type(config, field)
        default = field.default
        help_text = meta.get("help", "")
        if kind is bool:  # a flag; one on by default is also negatable (--passage / --no-passage)
            action = argparse.BooleanOptionalAction if default is True else "store_true"
            parser.add_argument(flag_name(field), dest=field.name, action=action, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"type": _parse_as(kind, field), "choices": meta.get("choices")}
        if meta.get("positional"):
            parser.add_argument(field.name, nargs="?", default=default, help=f"{help_text} (default: {default})", **kwargs)
        elif meta.get("required"):
            parser.add_argument(flag_name(field), dest=field.name, required=True, help=f"{help_text} (required)", **kwargs)
        else:
            shown = "" if default is None and "(default:" in help_text else f" (default: {default})"
            parser.add_argument(flag_name(field), dest=field.name, default=default, help=f"{help_text}{shown}", **kwargs)


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser for the registered commands."""
    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="interlayer",
        description="Mechanistic interpretability of the intermediate layers of transformer language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in sorted(commands.items()):
        words = name.split()
        doc = (cmd.config.__doc__ or "").strip().splitlines()[0]
        if len(words) == 1:
            sub = top.add_parser(words[0], help=doc, description=doc)
        else:
            if words[0] not in groups:
                group = top.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            sub = groups[words[0]].add_parser(words[1], help=doc, description=doc)
        _add_options(sub, cmd.config)
        sub.set_defaults(_command=cmd)
    return parser


def emit_json(payload: Any) -> None:
    """Print a JSON document to standard output."""
    print(json.dumps(payload, indent=2))


def write_json_output(out: str | None, payload: Any) -> None:
    """A command's ``--out FILE.json``: written atomically, then named on standard output."""
    if out:
        from pathlib import Path

        from .files import write_json_atomic

        write_json_atomic(Path(out), payload)
        print(f"wrote {out}")
