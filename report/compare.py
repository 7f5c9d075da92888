"""``interlayer report compare A.json B.json``: two or more finished reports side by side.
Every analysis both reports have is drawn with one line per model on the shared
relative-depth axis (so a 30-layer and an 18-layer model line up), its layer of interest
marked in the model's colour, followed by a table of where each model does what and each
model's sentences. Only the reports' JSON is read: nothing is recomputed.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from interlayer.errors import InterlayerError

from .summary import Comparison, Panel

COMPARISON_SCHEMA = "interlayer.report-comparison"
"""The ``schema`` field of a comparison's JSON (how a rerun knows the file is its own)."""


def read_report(path: str | Path) -> tuple[str, list[Panel], dict[str, Any]]:
    """``(model, panels, payload)`` of a report's JSON (``NAME.json`` next to ``NAME.html``);
    an HTML path is read as its JSON. A file that is not an interlayer report, or one
    written before the summary panels, is one error naming it."""
    from .build import REPORT_SCHEMA, output_paths

    file = Path(path).expanduser()
    if file.suffix == ".html":
        file = output_paths(file)[0]
    if not file.is_file():
        raise InterlayerError(f"report {str(path)!r} does not exist; give the NAME.json an `interlayer report --out "
                              "NAME.html` wrote")
    try:
        payload = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InterlayerError(f"{file} is not JSON: {err}") from err
    if not isinstance(payload, dict) or payload.get("schema") != REPORT_SCHEMA:
        raise InterlayerError(f"{file} is not an interlayer report's JSON (no schema {REPORT_SCHEMA!r})")
    sections = payload.get("sections", {})
    if any("panels" not in s for s in sections.values()):
        raise InterlayerError(f"{file} was written by an interlayer before the summary panels; rerun its report")
    panels = [Panel.from_json(p) for s in sections.values() if s.get("status") == "ok" for p in s["panels"]]
    return str(payload.get("model", file.stem)), panels, payload


def compare(paths: Sequence[str | Path]) -> Comparison:
    """The panels of every report in ``paths``, by model (a model named twice gets its file's name too)."""
    if len(paths) < 2:
        raise InterlayerError(f"report compare needs at least two reports, got {len(paths)}")
    models: dict[str, list[Panel]] = {}
    for path in paths:
        name, panels, _ = read_report(path)
        if name in models:
            name = f"{name} ({Path(path).stem})"
        models[name] = panels
    return Comparison(models)


def compare_html(comparison: Comparison, plotly_js: str) -> str:
    """The comparison page: the shared panels, the table, each model's sentences."""
    from .render import document_head, figure_html, table_html
    from .summary import panels_figure

    esc = html.escape
    names = list(comparison.models)
    title = "interlayer report comparison: " + " vs ".join(names)
    parts = [document_head(title, plotly_js), f"<h1>{esc(title)}</h1>"]
    fig = panels_figure(comparison.models, title="Where things happen, model by model")
    if fig is None:
        parts.append("<p>The reports share no analysis: nothing to draw together.</p>")
    else:
        parts.append(figure_html(fig, "fig-compare"))
        parts.append('<p class="meta">Each analysis the reports share, one line per model, on relative depth '
                     "(block l of L at (l + 1) / L); dashed: each model's layer of interest.</p>")
    parts.append("<h2>Where things happen</h2>" + table_html(comparison.table(), "layers of interest")
                 .replace("<details>", "<details open>", 1))
    for name, panels in comparison.models.items():
        parts.append(f"<h2>{esc(name)}</h2><ul>" + "".join(f"<li><b>{esc(p.analysis)}.</b> {esc(p.sentence)}</li>"
                                                          for p in panels if p.sentence) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison(paths: Sequence[str | Path], out: str | Path) -> Path:
    """Compare the reports in ``paths`` and write the page to ``out`` (and ``out``'s JSON:
    the models' layers of interest); returns ``out``."""
    from plotly.offline import get_plotlyjs

    from interlayer.io.files import check_writable, write_json_atomic, write_text_atomic

    out = check_writable(out, suffixes=(".html",))
    side = out.with_suffix(".json")
    if side.exists():
        try:
            ours = json.loads(side.read_text(encoding="utf-8")).get("schema") == COMPARISON_SCHEMA
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InterlayerError(f"--out {str(out)!r} would overwrite {str(side)!r}, which is not a report comparison; "
                                  "give another --out")
    comparison = compare(paths)
    write_text_atomic(out, compare_html(comparison, get_plotlyjs()))
    write_json_atomic(side, {"schema": COMPARISON_SCHEMA, "reports": [str(p) for p in paths],
                                                 "models": list(comparison.models),
                                                 "where": json.loads(comparison.table().to_json(orient="records"))})
    return out


__all__ = ["COMPARISON_SCHEMA", "compare", "compare_html", "read_report", "write_comparison"]
