"""The command registry: how a command is declared, and how the parser is built from
the declarations. It imports no command and no method package; command modules
(``interlayer.cli.commands``, ``interlayer.lens.cli``, ...) import it to register
themselves, and :mod:`interlayer.cli.dispatch` discovers them and dispatches.

A command is ``fn(config) -> exit code`` registered with :func:`command` under a
name (words split by spaces, e.g. ``"lens tune"``) and a config dataclass whose
fields (:func:`~interlayer.options.option`) become its options, their help and their
``--help`` section (:data:`~interlayer.options.GROUPS`). Every command also takes the
global flags (``-v/--verbose``, ``--debug``, ``-q/--quiet``, ``--json``) after its name,
and ``--config FILE`` / ``--print-config``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InterlayerError
from ..model.options import LOADED
from ..options import GROUPS, check_value, config_key, field_type, flag_name, group_of

__all__ = ["COMMANDS", "Command", "EXIT_CODES", "OUTPUT", "RUN", "build_parser", "command", "emit_json", "note", "say", "show",
           "started_computing", "write_figure", "write_json_output", "write_table"]

EXIT_CODES = """exit status:
  0  done
  1  a failure during the computation (non-finite training loss, a failed rank, the disk budget, an I/O error,
     any unexpected error: one line, the traceback with --debug)
  2  bad input, found before any computation (a usage error, a bad value, file, model or site)
  3  finished, but some parts failed (a report section, a sweep member); see the output"""


@dataclass(frozen=True)
class Command:
    name: str
    config: type
    run: Callable[[Any], int | None]
    aliases: tuple[str, ...] = ()
    """Deprecated top-level names that still run the command, after a notice."""


COMMANDS: dict[str, Command] = {}


def command(name: str, config: type, *, aliases: tuple[str, ...] = ()) -> Callable[[Callable[[Any], int | None]],
                                                                                  Callable[[Any], int | None]]:
    """Register ``fn(config) -> exit code`` as the CLI command ``name`` (words split by spaces);
    ``aliases``: old one-word names kept working, with a deprecation notice."""

    def register(fn: Callable[[Any], int | None]) -> Callable[[Any], int | None]:
        COMMANDS[name] = Command(name, config, fn, aliases)
        return fn

    return register


@dataclass
class Output:
    """Where a command's output goes: set from ``--json`` and ``--quiet`` for one run."""

    json: bool = False
    quiet: bool = False


OUTPUT = Output()


@dataclass
class RunState:
    """Whether the command has started computing (the model is loaded): an I/O error
    from then on is a failure of the run (exit 1), before it bad input (exit 2)."""

    computing: bool = False


RUN = RunState()


def started_computing() -> None:
    """Mark the start of the computation (called once the model is loaded)."""
    RUN.computing = True


LOADED.append(started_computing)  # every ModelOptions.load() starts the computation


def say(text: str) -> None:
    """A human line (a note, ``wrote X``): standard output, or standard error with
    ``--json`` (which keeps standard output one JSON document); nothing with ``--quiet``."""
    if OUTPUT.quiet:
        return
    print(text, file=sys.stderr if OUTPUT.json else sys.stdout)


def note(text: str) -> None:
    """A notice on standard error that ``--quiet`` does not hide (something the user must know)."""
    print(f"interlayer: note: {text}", file=sys.stderr)


NO_JOURNAL = ("no --out given: the result is printed only, and an interrupted run starts over "
              "(give -o FILE.json to keep a resume journal next to it)")


def show(text: str, payload: Any) -> None:
    """A command's result: ``text`` (a table) for people, or ``payload`` as JSON with ``--json``."""
    if OUTPUT.json:
        emit_json(payload)
    elif not OUTPUT.quiet:
        print(text)


_NEGATIVE_NUMBER = re.compile(r"^-\.?\d")
"""Arguments such as ``-4,4``, ``-1`` or ``-.5`` are values, never flags (no flag starts
with a digit), so ``--coefs -4,4`` and ``--layers -1`` parse."""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def _new_parser(container: Any, name: str | None = None, **kwargs: Any) -> argparse.ArgumentParser:
    parser = container.add_parser(name, formatter_class=_Formatter, **kwargs) if name else \
        argparse.ArgumentParser(formatter_class=_Formatter, **kwargs)
    parser._negative_number_matcher = _NEGATIVE_NUMBER
    return parser


def _parse_as(kind: type, field: dataclasses.Field) -> Callable[[str], Any]:
    """An argparse type that converts, then checks the field's bounds and spec, so a bad
    value is a usage error before anything runs."""

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


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """The flags every command takes before or after its name. Under a command their
    default is ``SUPPRESS``, so one given before the name is not reset."""
    d = (lambda v: v) if default is None else (lambda v: default)
    parser.add_argument("-v", "--verbose", action="store_true", default=d(False), help="log progress details")
    parser.add_argument("--debug", action="store_true", default=d(False), help="show the full traceback of an error")
    parser.add_argument("-q", "--quiet", action="store_true", default=d(False),
                        help="print nothing but errors and warnings (and the JSON with --json)")
    parser.add_argument("--json", action="store_true", default=d(False),
                        help="print the result as one JSON document on standard output (notes go to standard error)")


def _add_options(parser: argparse.ArgumentParser, config: type) -> None:
    sections = {name: parser.add_argument_group(f"{name} options") for name in GROUPS}
    for field in dataclasses.fields(config):
        meta = field.metadata
        if not meta.get("cli", True):
            continue
        section = sections[group_of(field)]
        names = [*([meta["short"]] if meta.get("short") else []), flag_name(field)]
        kind = field_type(config, field)
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = meta.get("help", "")
        if kind is bool:  # a flag; one on by default is also negatable (--passage / --no-passage)
            action = argparse.BooleanOptionalAction if default is True else "store_true"
            section.add_argument(*names, dest=field.name, action=action, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"type": _parse_as(kind, field), "choices": meta.get("choices"), "dest": field.name,
                                  "metavar": None if meta.get("choices") else config_key(field).upper()}
        if meta.get("repeat"):
            kwargs["action"] = "append"
        if meta.get("required"):  # required after --config is merged: checked by check_required, exit 2
            shown = " (required)"
        elif default is None or "(default:" in help_text:
            shown = ""  # None means "not given": the help says what happens then
        else:
            shown = f" (default: {default})"
        if meta.get("repeat"):
            shown = f" ({shown.strip()[1:-1]}, repeatable)" if shown else " (repeatable)"
        section.add_argument(*names, default=default, help=f"{help_text}{shown}", **kwargs)
        if meta.get("positional"):
            parser.add_argument(f"{field.name}__positional", nargs="*", default=[], type=kwargs["type"],
                                metavar=field.name.upper(), help=f"{help_text} (or {names[-1]}, repeatable)")
        if meta.get("deprecated_positional"):
            parser.add_argument(f"{field.name}__positional", nargs="?", default=None, type=kwargs["type"],
                                metavar=field.name.upper(), help=argparse.SUPPRESS)
    for name in GROUPS:  # an empty section would print a bare heading
        if not sections[name]._group_actions:
            parser._action_groups.remove(sections[name])


def _add_command(container: Any, word: str, cmd: Command, *, alias_of: str | None = None) -> argparse.ArgumentParser:
    doc = (cmd.config.__doc__ or "").strip().splitlines()[0]
    if alias_of is None:
        sub = _new_parser(container, word, help=doc, description=doc)
    else:  # hidden from the command list; still has its own --help
        sub = _new_parser(container, word, description=f"{doc}\n\n(deprecated name: use `interlayer {alias_of}`)")
    _global_flags(sub, argparse.SUPPRESS)
    sub.add_argument("--config", metavar="FILE", default=None,
                     help="read options from a TOML (or YAML) file of `key = value` lines; flags override it")
    sub.add_argument("--print-config", action="store_true", default=False,
                     help="print the resolved configuration (TOML, or JSON with --json) and exit")
    _add_options(sub, cmd.config)
    sub.set_defaults(_command=cmd, _alias=word if alias_of else None, _parser=sub)
    return sub


def build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    """The argument parser for the registered commands."""
    commands = COMMANDS if commands is None else commands
    parser = _new_parser(
        None, prog="interlayer",
        description="Mechanistic interpretability of the intermediate layers of transformer language models.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("--version", action="version", version=f"interlayer {package_version()}")
    _global_flags(parser, None)
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in sorted(commands.items()):
        words = name.split()
        if len(words) == 1:
            _add_command(top, words[0], cmd)
        else:
            if words[0] not in groups:
                members = ", ".join(n.split()[1] for n in sorted(commands) if n.split()[0] == words[0])
                group = _new_parser(top, words[0], help=f"{members}", description=f"interlayer {words[0]}: {members}")
                _global_flags(group, argparse.SUPPRESS)
                groups[words[0]] = group.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
            _add_command(groups[words[0]], words[1], cmd)
    for name, cmd in sorted(commands.items()):
        for alias in cmd.aliases:
            _add_command(top, alias, cmd, alias_of=name)
    return parser


def package_version() -> str:
    """The installed package's version (``importlib.metadata``), else ``interlayer.__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("interlayer")
    except PackageNotFoundError:
        import interlayer

        return getattr(interlayer, "__version__", "unknown")


def emit_json(payload: Any) -> None:
    """Print a JSON document to standard output."""
    print(json.dumps(payload, indent=2, default=str))


def write_json_output(out: str | None, payload: Any) -> None:
    """A command's ``--out FILE.json``: written atomically, then named (:func:`say`)."""
    if out:
        from pathlib import Path

        from ..io.files import write_json_atomic

        write_json_atomic(Path(out), payload)
        say(f"wrote {out}")


TABLE_SUFFIXES = (".csv", ".json")


def write_table(frame: Any, out: str) -> None:
    """Write a DataFrame as .csv or .json (by the extension of ``out``), atomically."""
    from pathlib import Path

    from ..io.files import write_atomic

    path = Path(out)
    if path.suffix == ".csv":
        write_atomic(path, frame.to_csv(index=False).encode())
    elif path.suffix == ".json":
        write_atomic(path, frame.to_json(orient="records", indent=2).encode())
    else:
        raise InterlayerError(f"--out {out!r}: unknown extension; valid choices: '.csv', '.json'")
    say(f"wrote {out}")


def write_figure(path: str | None, figure: Any) -> None:
    """``--figures F.html``: one self-contained plotly page (plotly.js embedded)."""
    if path:
        from pathlib import Path

        from ..io.files import write_atomic

        write_atomic(Path(path), figure.to_html(include_plotlyjs=True, full_html=True).encode())
        say(f"wrote {path}")


def check_outputs(out: str | None, out_suffixes: tuple[str, ...], figures: str | None = None) -> None:
    """Check ``--out`` and ``--figures`` before any computation."""
    from ..io.files import check_writable

    if out:
        check_writable(out, suffixes=out_suffixes)
    if figures:
        check_writable(figures, flag="--figures", suffixes=(".html",))
