"""The code examples of the README and the docs pages, as the tests run them.

A fenced block is an example by its language:

* ```` ```python ````: run, page by page, in order, in one fresh namespace;
* ```` ```bash ````: run line by line after the page's Python blocks (``interlayer`` lines
  through ``interlayer.cli.main``, others in bash; see ``test_examples.py``);
* any other language (``text``, ``toml``, ``json``, ``console``): shown, not run (usage
  lines, outputs and file formats).

Both run in one scratch folder per page that holds ``corpus.txt`` (the packaged sample
text, one document per line), ``corpus.jsonl`` (the same as ``{"text": ...}`` records)
and ``prompts.txt``. A block directly after a line ``<!-- docs-test: skip REASON -->`` is
not run; REASON must be one of :data:`SKIP_REASONS`, and the tests list every skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN = {"python", "bash"}
SKIP = re.compile(r"^<!-- docs-test: skip (?P<reason>[a-z-]+)(?: .*)? -->\s*$")
SKIP_REASONS = {
    "installs": "installs packages or creates environments (the tests run inside one)",
    "gpu": "needs a GPU or several processes on several machines",
    "long": "runs the full-size job the page measures (minutes to hours on a CPU); a smaller form of it runs",
    "interactive": "starts a server or an interactive program (jupyter, mkdocs serve)",
    "hub-files": "reads files downloaded from a hub (the tests build such files in the published layout)",
}
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+)(?P<info>[^`\n]*)$")


@dataclass
class Example:
    """One fenced code block of a page."""

    path: Path
    line: int
    language: str
    source: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The README and every markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def examples(path: Path) -> list[Example]:
    """Every fenced block of ``path`` (nested indentation removed)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found, i, skip = [], 0, None
    while i < len(lines):
        match = FENCE.match(lines[i])
        skipped = SKIP.match(lines[i].strip())
        if skipped:
            skip = skipped.group("reason")
        elif match:
            indent, fence = len(match.group("indent")), match.group("fence")
            info = match.group("info").strip().split()
            body, j = [], i + 1
            while j < len(lines) and not lines[j].strip().startswith(fence):
                body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
                j += 1
            found.append(Example(path, i + 1, info[0] if info else "", "\n".join(body) + "\n", skip))
            skip, i = None, j
        elif lines[i].strip():
            skip = None
        i += 1
    return found


def runnable(path: Path) -> list[Example]:
    """The examples of ``path`` that the tests run or skip (python and bash)."""
    return [e for e in examples(path) if e.language in RUN]


def scratch(folder: Path) -> None:
    """The files every example may read."""
    text = (ROOT / "interlayer" / "data" / "sample_text.txt").read_text(encoding="utf-8")
    (folder / "corpus.txt").write_text(text, encoding="utf-8")
    docs = [line for line in text.splitlines() if line.strip()]
    (folder / "corpus.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    (folder / "prompts.txt").write_text("The Eiffel Tower is in the city of\nThe capital of Japan is\n", encoding="utf-8")
