"""Tables generated from files in the repository, filled into a page where it says
``<!-- generated: NAME -->``: the benchmark results (``benchmarks/results/*.json``),
each with its device and the commit that last wrote it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
HEADLINE = re.compile(r"(speedup|_vs_|ratio|_over_|fraction_of)", re.I)


def _commit(path: Path) -> str:
    """The short hash of the last commit that touched ``path`` (``-`` outside git)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"`{out}`" if out else "uncommitted"


def _flat(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix[:-1], value


def _number(value: float) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def headline(record: dict, limit: int = 4) -> str:
    """The record's ratios (keys naming a speed-up, a ``_vs_`` comparison or a ratio)."""
    found = [(k, v) for k, v in _flat(record) if HEADLINE.search(k.rsplit(".", 1)[-1])]
    shown = [f"{k} = {_number(v)}" for k, v in found[:limit]]
    if len(found) > limit:
        shown.append(f"(+{len(found) - limit} more)")
    return "; ".join(shown) or "-"


def benchmark_results() -> str:
    """One row per benchmark result file that names its device."""
    rows = ["| result file | device | model | headline ratios | commit |", "| --- | --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or "device" not in record:
            continue
        device = str(record["device"]).replace("|", "/")
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        model = str(record.get("model") or config.get("model") or "-")
        rows.append(f"| `{path.name}` | {device} | {model} | {headline(record)} | {_commit(path)} |")
    return "\n".join(rows)


GENERATORS = {"benchmark-results": benchmark_results}


def fill(markdown: str) -> str:
    """Replace every ``<!-- generated: NAME -->`` marker; an unknown name is an error."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated table {name!r}; known: {', '.join(sorted(GENERATORS))}")
        return GENERATORS[name]()

    return MARKER.sub(one, markdown)
