"""The ``interlayer`` command line: discovers the command modules and dispatches.

Commands are declared in the modules of :data:`COMMAND_MODULES` with
:func:`interlayer.command_registry.command`; importing a module registers its
commands. Bad input ends with one line on standard error and exit status 2, never a
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Sequence

from .command_registry import COMMANDS, Command, build_parser
from .distributed import launched
from .errors import InterlayerError
from .options import check_required

COMMAND_MODULES: tuple[str, ...] = (
    "interlayer.commands",
    "interlayer.lens.cli",
    "interlayer.probes.cli",
    "interlayer.report.cli",
    "interlayer.saes.cli",
    "interlayer.steering.cli",
)
"""The modules whose import registers the built-in commands."""

DISTRIBUTED_COMMANDS = ("cache", "sae train")
"""The commands that run on several processes under ``torchrun`` (every other command
would only repeat the same work on each rank and race on its output files)."""


def discover() -> dict[str, Command]:
    """Import every command module; returns the registry."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    return COMMANDS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``interlayer`` script; returns the exit status."""
    parser = build_parser(discover())
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # usage errors (exit 2) are returned; --help (exit 0) exits as usual
        if exit_.code in (0, None):
            raise
        return int(exit_.code)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cmd: Command = args._command
    if launched() and cmd.name not in DISTRIBUTED_COMMANDS:
        print(f"interlayer: error: `interlayer {cmd.name}` runs on one process; under torchrun only "
              f"{', '.join(f'`{c}`' for c in DISTRIBUTED_COMMANDS)} run (launch the others without torchrun)",
              file=sys.stderr)
        return 2
    code = _run(cmd, args)
    if launched():
        _exit_rank(code)
    return code


def _run(cmd: Command, args: argparse.Namespace) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cmd.config) if f.metadata.get("cli", True)}
    try:
        config = cmd.config(**values)
        check_required(config)
        return int(cmd.run(config) or 0)
    except (InterlayerError, OSError) as err:
        if args.debug:
            raise
        print(f"interlayer: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interlayer: interrupted; run the same command again to resume where it supports it", file=sys.stderr)
        return 130


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
