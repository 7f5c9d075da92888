"""Every code example of the README and the docs runs (see ``tests/docs/examples.py``)."""

from __future__ import annotations

import os
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


@pytest.mark.integration
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_page_examples_run(page: Path, tmp_path, gemma):
    scratch(tmp_path)
    blocks = [e for e in runnable(page) if e.skip is None]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    python = [e for e in blocks if e.language == "python"]
    if python:
        # one interpreter, every block in order; a failure names the block's line
        program = "\n".join(f"# --- {e.where}\n" + e.source for e in python)
        (tmp_path / "examples.py").write_text(program, encoding="utf-8")
        done = subprocess.run([sys.executable, "examples.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{page.name}: the Python examples failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    for example in (e for e in blocks if e.language == "bash"):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", example.source], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{example.where}: the bash example failed\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
