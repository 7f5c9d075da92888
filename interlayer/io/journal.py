"""A resume journal: an append-only JSON-lines file of finished work, so an interrupted
run resumes where it stopped.

The file's first line is a header naming the run (``{"journal": 1, "run": {...}}``),
written atomically when the journal is created; each later line is one finished piece of
work, ``{"key": ..., "record": ...}``, written whole, flushed and fsynced before the next
piece starts. Reading it back:

* a last line cut short by an interruption (no newline at its end) is dropped with a
  warning, and cut off the file before anything is appended;
* a journal whose header names another run is refused with an error naming both runs,
  the fields where they differ and the file to delete;
* a later record of a key replaces an earlier one (:meth:`Journal.done`).

Work whose pieces are large and are produced under options that differ piece by piece
(the report's sections: ``--only`` picks some, a later run others) is kept as
:class:`KeyedParts` instead: one atomically written JSON file per piece, ``{"key",
"record"}``, that is reused only when its key (a hash of every setting the piece
depends on) matches. Both are the one resume mechanism: finished work is written whole
before the next piece starts, and reused only by the run it belongs to.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import InterlayerError
from .files import write_atomic, write_json_atomic
from .json_records import decode_utf8, json_lines

log = logging.getLogger(__name__)

FORMAT = 1


class JournalError(InterlayerError):
    """A journal that belongs to another run, or is not a journal."""


def _canonical(run: Mapping[str, Any]) -> dict[str, Any]:
    """``run`` as it reads back from JSON (tuples become lists, other objects their ``str``)."""
    return json.loads(json.dumps(dict(run), default=str, sort_keys=True))


def _line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, ensure_ascii=False) + "\n").encode("utf-8")


class Journal:
    """The journal of one run at ``path``: created with its header when missing, else read
    back and checked to be this run's (see the module docstring).

    ``run`` identifies the run: every setting that changes the work (JSON-able values;
    others are compared by their ``str``)."""

    def __init__(self, path: str | os.PathLike, run: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.run = _canonical(run)
        self._done: dict[str, Any] = {}
        if self.path.is_file():
            self._read()
        else:
            write_atomic(self.path, _line({"journal": FORMAT, "run": self.run}))

    def _read(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            log.warning("%s: its last line was cut short by an interruption (%d bytes); that piece of work is "
                        "done again", self.path, len(raw) - cut)
            raw = raw[:cut]
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
                handle.flush()
                os.fsync(handle.fileno())
        # split at "\n" only: a record's text may hold other line separators (U+2028...)
        lines = iter(json_lines(decode_utf8(raw, str(self.path)).split("\n"), str(self.path)))
        header = next(lines, (None, None))[1]
        if not isinstance(header, dict) or header.get("journal") != FORMAT or "run" not in header:
            raise JournalError(f"{self.path} is not an interlayer resume journal (format {FORMAT}: its first line "
                               "names the run); delete it or write elsewhere")
        if header["run"] != self.run:
            raise JournalError(self._other_run(header["run"]))
        for where, item in lines:
            if not isinstance(item, dict) or "key" not in item or "record" not in item:
                raise JournalError(f"{where} is not a journal record (an object with 'key' and 'record')")
            self._done[str(item["key"])] = item["record"]

    def _other_run(self, theirs: Any) -> str:
        if not isinstance(theirs, dict):
            return f"{self.path} belongs to another run ({theirs!r}); this run is {self.run!r}"
        fields = sorted(set(theirs) | set(self.run))
        differ = [f"{k}: {theirs.get(k, '(unset)')!r} there, {self.run.get(k, '(unset)')!r} here"
                  for k in fields if theirs.get(k, "(unset)") != self.run.get(k, "(unset)")]
        return (f"{self.path} is the journal of another run ({'; '.join(differ)}); delete it to start this run "
                "afresh, or rerun with that run's settings to resume it")

    def done(self) -> dict[str, Any]:
        """Every finished piece of work: ``{key: record}`` (a copy)."""
        return dict(self._done)

    def __contains__(self, key: str) -> bool:
        return key in self._done

    def append(self, key: str, record: Any) -> None:
        """Journal one finished piece of work: one whole line, flushed and fsynced."""
        with open(self.path, "ab") as handle:
            handle.write(_line({"key": key, "record": record}))
            handle.flush()
            os.fsync(handle.fileno())
        self._done[key] = record

    def remove(self) -> None:
        """Delete the journal (its run's result is written)."""
        self.path.unlink(missing_ok=True)


class KeyedParts:
    """Finished pieces of work as one file each in ``folder`` (``<name>.json`` holding
    ``{"key": key, "record": record}``, written atomically), each reused only by a run
    with the same ``key``.

    ``record_field`` names the record in the file (the report's parts call it
    ``result``)."""

    def __init__(self, folder: str | os.PathLike, record_field: str = "record") -> None:
        self.folder = Path(folder)
        self.field = record_field

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def is_part(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a part file (an object of exactly a key and a record)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and set(data) == {"key", self.field}

    def load(self, name: str, key: str) -> Any | None:
        """The record of piece ``name`` if it was written under ``key``; ``None`` when it is
        missing, another run's, or damaged (then the piece is done again)."""
        try:
            payload = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(payload, dict) or payload.get("key") != key or self.field not in payload:
            return None
        return payload[self.field]

    def save(self, name: str, key: str, record: Any) -> None:
        """Write piece ``name`` whole (atomically) under ``key``."""
        write_json_atomic(self.path(name), {"key": key, self.field: record})


__all__ = ["FORMAT", "Journal", "JournalError", "KeyedParts"]
