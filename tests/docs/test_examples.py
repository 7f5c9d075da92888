"""Every code example of the README and the docs runs (see ``tests/docs/examples.py``).

The examples run in this test process, one page at a time, in a scratch folder: a page's
Python blocks in one fresh namespace, then its bash blocks line by line. A line that
starts with ``interlayer`` runs through ``interlayer.cli.main`` (as the unit tests call
the CLI); any other line (``ls``, ``cat``, ``torchrun``) runs in bash. Loading the
embedded Gemma with its default options returns the session's model instead of loading
the same weights again (about 7 s a time on 2 cores); every other load is real."""

from __future__ import annotations

import contextlib
import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.examples import ROOT, SKIP_REASONS, pages, runnable, scratch

PAGES = [p for p in pages() if runnable(p)]


def test_pages_have_examples_and_every_skip_has_a_known_reason():
    assert ROOT / "README.md" in PAGES
    for page in pages():
        for example in runnable(page):
            assert example.skip is None or example.skip in SKIP_REASONS, example.where


def _lines(source: str) -> list[str]:
    """The logical lines of a bash block (``\\`` continuations joined, blank lines dropped)."""
    return [line for line in source.replace("\\\n", " ").splitlines() if line.strip() and not line.strip().startswith("#")]


def _cli(line: str, where: str, folder: Path) -> None:
    from interlayer.cli.dispatch import main

    words = shlex.split(line, comments=True)
    target = None
    if ">" in words:
        at = words.index(">")
        words, target = words[:at], words[at + 1]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            status = main(words[1:])
        except SystemExit as done:  # --version and --help exit through argparse
            status = done.code or 0
    if target:
        (folder / target).write_text(out.getvalue(), encoding="utf-8")
    assert status == 0, f"{where}: `{line.strip()}` exited {status}\n{out.getvalue()[-3000:]}"


@pytest.fixture
def shared_gemma(gemma, monkeypatch):
    """``load_model`` returns the session's Gemma for the embedded alias with its defaults."""
    import interlayer
    from interlayer.model import loading

    real = loading.load_model

    def load_model(spec=loading.DEFAULT_MODEL, device=None, dtype=None, *, tokenizer=None, trust_remote_code=False):
        if spec == "gemma-3-270m" and device in (None, "cpu") and dtype in (None, "float32") and tokenizer is None \
                and not trust_remote_code:
            return gemma
        return real(spec, device, dtype, tokenizer=tokenizer, trust_remote_code=trust_remote_code)

    monkeypatch.setattr(loading, "load_model", load_model)
    monkeypatch.setattr(interlayer, "load_model", load_model)
    return gemma


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path, shared_gemma, monkeypatch):
    scratch(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    blocks = [e for e in runnable(page) if e.skip is None]
    namespace: dict = {"__name__": "__main__"}
    for example in (e for e in blocks if e.language == "python"):
        try:
            exec(compile(example.source, example.where, "exec"), namespace)
        except Exception as err:  # noqa: BLE001 - the failing block is named
            raise AssertionError(f"{example.where}: the Python example failed: {type(err).__name__}: {err}") from err
    for example in (e for e in blocks if e.language == "bash"):
        for line in _lines(example.source):
            if line.lstrip().startswith("interlayer "):
                _cli(line, example.where, tmp_path)
                continue
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=tmp_path, capture_output=True, text=True,
                                  timeout=900)
            assert done.returncode == 0, f"{example.where}: `{line}` failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
