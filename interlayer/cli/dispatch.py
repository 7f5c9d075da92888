"""The ``interlayer`` command line: discovers the command modules and dispatches.

Commands are declared in the modules of :data:`COMMAND_MODULES` with
:func:`interlayer.cli.registry.command`; importing a module registers its
commands. Bad input ends with one line on standard error and exit status 2, a failure
during the computation with one line and exit status 1, never a traceback (``--debug``
shows it); see :data:`~interlayer.cli.registry.EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .registry import COMMANDS, OUTPUT, RUN, Command, build_parser
from ..distributed import launched
from ..errors import InterlayerError
from ..options import check_required, config_key, field_type, flag_name, progress_wanted

COMMAND_MODULES: tuple[str, ...] = (
    "interlayer.cli.commands",
    "interlayer.lens.cli",
    "interlayer.probes.cli",
    "interlayer.report.cli",
    "interlayer.saes.cli",
    "interlayer.steering.cli",
    "interlayer.tracing.cli",
)
"""The modules whose import registers the built-in commands."""

JOINED_NAMES: dict[tuple[str, ...], str] = {("report", "compare"): "report-compare"}
"""Commands spelled as two words under a command that is itself one (``report compare``)."""

DISTRIBUTED_COMMANDS = ("cache", "sae train")
"""The commands that run on several processes under ``torchrun`` (every other command
would only repeat the same work on each rank and race on its output files)."""


def discover() -> dict[str, Command]:
    """Import every command module; returns the registry."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    return COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interlayer`` script; returns the exit status (see
    :data:`~interlayer.cli.registry.EXIT_CODES`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, name in JOINED_NAMES.items():  # `interlayer report compare` is the command `report-compare`
        if tuple(argv[:len(words)]) == words:
            argv = [name, *argv[len(words):]]
    parser = build_parser(discover())
    try:
        args = parser.parse_args(argv)
        from_file: dict[str, Any] = {}
        if getattr(args, "config", None):
            try:
                from_file = read_config_file(args.config, args._command.config)
            except InterlayerError as err:
                print(f"interlayer: error: {err}", file=sys.stderr)
                return 2
            plain = {k: v for k, v in from_file.items() if not _is_repeat(args._command.config, k)}
            args._parser.set_defaults(**plain)  # flags given on the command line still win
            args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (exit 2) are returned; --help/--version (exit 0) exit as usual
        if exit_.code in (0, None):
            raise
        return int(exit_.code)
    for name, value in from_file.items():  # a repeatable flag given on the command line replaces the file's list
        if _is_repeat(args._command.config, name) and getattr(args, name) is None:
            setattr(args, name, value)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cmd: Command = args._command
    if args._alias:
        print(f"interlayer: `interlayer {args._alias}` is deprecated; use `interlayer {cmd.name}`", file=sys.stderr)
    if launched() and cmd.name not in DISTRIBUTED_COMMANDS:
        print(f"interlayer: error: `interlayer {cmd.name}` runs on one process; under torchrun only "
              f"{', '.join(f'`{c}`' for c in DISTRIBUTED_COMMANDS)} run (launch the others without torchrun)",
              file=sys.stderr)
        return 2
    OUTPUT.json, OUTPUT.quiet = args.json, args.quiet
    try:
        code = _run(cmd, args)
    finally:
        OUTPUT.json = OUTPUT.quiet = False
    if launched():
        _exit_rank(code)
    return code


COMPUTATION_ERRORS = ("NonFiniteError", "NonFiniteSteeringError", "DiskBudgetError", "RankFailedError")
"""Errors (by class name, so the core imports no method package) that mean the
computation failed, not the input: exit status 1."""


def _run(cmd: Command, args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cmd.config) if f.metadata.get("cli", True)}
    for field in dataclasses.fields(cmd.config):
        given = getattr(args, f"{field.name}__positional", None)
        if field.metadata.get("positional"):
            if given:
                values[field.name] = [*given, *(values[field.name] or [])]
            continue
        if given is not None:
            print(f"interlayer: the positional {field.name.upper()} is deprecated; use {flag_name(field)} {given}",
                  file=sys.stderr)
            values[field.name] = given
    RUN.computing = False
    try:
        config = cmd.config(**values)
        if args.print_config:  # a template too: required options may still be unset
            print(json.dumps(config_values(config), indent=2) if args.json else to_toml(config_values(config)))
            return 0
        check_required(config)
        if hasattr(config, "no_progress") and not progress_wanted(config.no_progress):
            config.no_progress = True  # no progress bars in logs, pipes and CI
        return int(cmd.run(config) or 0)
    except KeyboardInterrupt:
        print("interlayer: interrupted; run the same command again to resume where it supports it", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        failed = _failed_computing(err)
        text = _one_line(err) if isinstance(err, (InterlayerError, OSError)) else f"{type(err).__name__}: {err}"
        print(f"interlayer: error: {text.splitlines()[0] if text else type(err).__name__}", file=sys.stderr)
        return 1 if failed else 2


def _failed_computing(err: BaseException) -> bool:
    """Exit 1 (the computation failed) or 2 (bad input, before any computation)."""
    if any(k.__name__ in COMPUTATION_ERRORS for k in type(err).__mro__):
        return True
    if isinstance(err, InterlayerError) and not isinstance(err, OSError):
        is_write = any(k.__name__ == "WriteError" for k in type(err).__mro__)
        return is_write and RUN.computing  # a bad value is bad input, even once the model is loaded
    if isinstance(err, OSError):
        return RUN.computing
    return True  # anything unexpected broke during the run


def _is_repeat(config: type, name: str) -> bool:
    return any(f.name == name and f.metadata.get("repeat") for f in dataclasses.fields(config))


def read_config_file(path: str, config: type) -> dict[str, Any]:
    """The options of a ``--config`` file (TOML; YAML when PyYAML is installed), keyed by
    field name, as the command line would give them: text for argparse to convert and
    check, booleans, lists for repeatable flags. Unknown keys are an error naming the
    valid ones."""
    from pathlib import Path

    file = Path(path).expanduser()
    if not file.is_file():
        raise InterlayerError(f"--config {path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise InterlayerError(f"--config {path!r}: reading YAML needs PyYAML (pip install pyyaml); "
                                  "or write the file as TOML") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise InterlayerError(f"--config {path!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    else:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise InterlayerError(f"--config {path!r} is not valid TOML: {err}") from None
    if not isinstance(data, dict):
        raise InterlayerError(f"--config {path!r} must hold `key = value` options, got a {type(data).__name__}")
    by_key = {config_key(f): f for f in dataclasses.fields(config) if f.metadata.get("cli", True)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        field = by_key.get(str(key).replace("-", "_"))
        if field is None:
            raise InterlayerError(f"--config {path!r}: unknown key {key!r}; valid keys: {', '.join(sorted(by_key))}")
        kind = field_type(config, field)
        if kind is bool:
            if not isinstance(value, bool):
                raise InterlayerError(f"--config {path!r}: {key} must be true or false, got {value!r}")
        elif field.metadata.get("repeat"):
            value = [str(v) for v in (value if isinstance(value, list) else [value])]
        elif isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif value is not None:
            value = str(value)
        values[field.name] = value
    return values


def config_values(config: Any) -> dict[str, Any]:
    """A config's command-line options by ``--config`` key (what ``--print-config`` shows)."""
    return {config_key(f): getattr(config, f.name) for f in dataclasses.fields(config) if f.metadata.get("cli", True)}


def to_toml(values: dict[str, Any]) -> str:
    """``key = value`` lines that :func:`read_config_file` reads back (unset options as comments)."""
    lines = []
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key} =   (unset)")
        elif isinstance(value, bool):
            lines.append(f"{key} = {str(value).lower()}")
        elif isinstance(value, (int, float)):
            lines.append(f"{key} = {value!r}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{key} = [{', '.join(json.dumps(str(v)) for v in value)}]")
        else:
            lines.append(f"{key} = {json.dumps(str(value))}")
    return "\n".join(lines)


def _exit_rank(code: int) -> None:
    """End a rank of a torchrun job with ``code`` at once. Every file is already written
    atomically; skipping the interpreter's teardown keeps gloo's threads, whose peers may
    be gone (a rank that failed, or one that finished first), from aborting the process
    and replacing the exit status with SIGABRT's."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and not isinstance(err, InterlayerError):
        where = f" {err.filename!r}" if err.filename else ""
        return f"{err.strerror or err}{':' if where else ''}{where}"
    return str(err)
