"""The resume journal: records come back keyed, a torn last line is dropped (and cut off
before the next append), another run's journal is refused naming both, every record is fsynced."""

from __future__ import annotations

import json
import logging

import pytest

from interlayer.io import journal as journal_module
from interlayer.io.journal import Journal, JournalError
from interlayer.errors import InterlayerError

RUN = {"model": "tiny", "seed": 0, "decodings": ("greedy", "lfd")}


def test_records_come_back_keyed_and_the_header_names_the_run(tmp_path):
    path = tmp_path / "new" / "run.jsonl"
    journal = Journal(path, RUN)
    assert journal.done() == {}
    journal.append("a", {"text": "x"})
    journal.append("b", [1, 2])
    journal.append("a", {"text": "y"})  # a later record of a key replaces the earlier one
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"journal": 1, "run": {"model": "tiny", "seed": 0, "decodings": ["greedy", "lfd"]}}
    assert len(lines) == 4
    again = Journal(path, dict(RUN))
    assert again.done() == {"a": {"text": "y"}, "b": [1, 2]} and "b" in again
    again.remove()
    assert not path.exists()


def test_a_torn_last_line_is_ignored_with_a_warning_and_resumed_after(tmp_path, caplog):
    path = tmp_path / "run.jsonl"
    journal = Journal(path, RUN)
    journal.append("a", "first")
    with open(path, "ab") as handle:
        handle.write(b'{"key": "b", "record": "sec')  # an interrupted write
    with caplog.at_level(logging.WARNING, logger="interlayer.io.journal"):
        resumed = Journal(path, RUN)
    assert resumed.done() == {"a": "first"}
    assert "cut short" in caplog.text
    resumed.append("b", "second")
    assert Journal(path, RUN).done() == {"a": "first", "b": "second"}


def test_another_runs_journal_is_refused_naming_both(tmp_path):
    path = tmp_path / "run.jsonl"
    Journal(path, RUN).append("a", 1)
    with pytest.raises(JournalError, match=r"another run \(seed: 0 there, 1 here\); delete it"):
        Journal(path, {**RUN, "seed": 1})
    with pytest.raises(JournalError, match=r"model: 'tiny' there, 'other' here"):
        Journal(path, {**RUN, "model": "other"})


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    path = tmp_path / "old.jsonl"
    path.write_text(json.dumps({"key": "k", "tag": "t", "outputs": []}) + "\n")  # the old header-less format
    with pytest.raises(JournalError, match="not an interlayer resume journal"):
        Journal(path, RUN)
    path.write_text(json.dumps({"journal": 1, "run": RUN}) + "\n{broken\n" + json.dumps({"key": "a", "record": 1}) + "\n")
    with pytest.raises(InterlayerError, match=r"old\.jsonl:2 is not valid JSON"):
        Journal(path, {**RUN, "decodings": ["greedy", "lfd"]})


def test_every_record_is_fsynced(tmp_path, monkeypatch):
    path = tmp_path / "run.jsonl"
    journal = Journal(path, RUN)
    synced = []
    real = journal_module.os.fsync
    monkeypatch.setattr(journal_module.os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    journal.append("a", 1)
    journal.append("b", 2)
    assert len(synced) == 2
