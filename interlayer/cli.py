"""The ``interlayer`` command line.

Commands register themselves with :func:`command`, naming a config dataclass
(:mod:`interlayer.config`); its fields become the command's options and their help.
Later modules add commands the same way, e.g. ``@command("lens tune", TuneConfig)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InterlayerError


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


def _base_type(annotation: Any) -> type:
    if isinstance(annotation, str):
        annotation = eval(annotation, {"typing": typing}, {})  # annotations are builtins only
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0]
    return annotation


def _add_options(parser: argparse.ArgumentParser, config: type) -> None:
    for field in dataclasses.fields(config):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        kind = _base_type(field.type)
        default = field.default
        help_text = meta.get("help", "")
        if kind is bool:
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, action="store_true",
                                default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"type": kind, "help": f"{help_text} (default: {default})", "choices": meta.get("choices")}
        if meta.get("positional"):
            parser.add_argument(field.name, nargs="?", default=default, **kwargs)
        else:
            parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=default, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every registered command."""
    parser = argparse.ArgumentParser(
        prog="interlayer",
        description="Mechanistic interpretability of the intermediate layers of transformer language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in sorted(COMMANDS.items()):
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interlayer`` script."""
    _register_builtin_commands()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cmd: Command = args._command
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cmd.config) if f.metadata.get("cli", True)}
    try:
        return int(cmd.run(cmd.config(**values)) or 0)
    except InterlayerError as err:
        print(f"interlayer: error: {err}", file=sys.stderr)
        return 2


def _register_builtin_commands() -> None:
    # Importing these modules registers their commands.
    from . import commands  # noqa: F401
    from .lens import cli as lens_cli  # noqa: F401
    from .probes import cli as probes_cli  # noqa: F401
    from .saes import cli as saes_cli  # noqa: F401


def emit_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))
