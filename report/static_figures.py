"""``--static-figures png,svg``: every figure of a report as a PNG or SVG file, for a paper
or a slide. Drawn by kaleido when it is installed, else by a headless chromium (Debian's
``chromium``) that runs the page's own plotly.js offline: a page with the figures asks
``Plotly.toImage`` for each and chromium's ``--dump-dom`` hands back the images. Nothing
reaches the network.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_atomic

FORMATS = ("png", "svg")
"""The image formats ``--static-figures`` writes."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1100, 560
CHROMIUM_TIMEOUT_S = 300


def check_formats(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """The formats asked for (``"png,svg"`` or a list), checked, and a backend that can
    draw them found, before any computation; ``None`` or empty: none."""
    if value is None:
        return ()
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    for name in names:
        if name not in FORMATS:
            raise InterlayerError(f"--static-figures: unknown format {name!r}; valid choices: {choices(FORMATS)}")
    if names and backend() is None:
        raise InterlayerError("--static-figures needs kaleido (pip install interlayer[static-figures]) or a chromium on PATH "
                              f"({', '.join(CHROMIUM_NAMES)}); neither was found")
    return tuple(dict.fromkeys(names))


def backend() -> str | None:
    """``"kaleido"``, the path of a chromium, or ``None``."""
    try:
        import kaleido  # noqa: F401

        return "kaleido"
    except ImportError:
        return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def figures_of(results: dict[str, Any]) -> dict[str, go.Figure]:
    """``{file stem: figure}``: the summary (``summary``) and each section's figures
    (``<section>-<i>``)."""
    from .render import summary_figure

    figures: dict[str, go.Figure] = {}
    summary = summary_figure(results)
    if summary is not None:
        figures["summary"] = summary
    for name, result in results.items():
        if result.status == "ok":
            figures.update({f"{name}-{i}": fig for i, fig in enumerate(result.figures)})
    return figures


def write_static_figures(results: dict[str, Any], folder: Path, formats: Sequence[str]) -> list[Path]:
    """Write every figure of ``results`` into ``folder`` in each of ``formats``; returns the files."""
    figures = figures_of(results)
    folder.mkdir(parents=True, exist_ok=True)
    images = render_images(figures, formats)
    written = []
    for (stem, fmt), data in images.items():
        path = folder / f"{stem}.{fmt}"
        write_atomic(path, data)
        written.append(path)
    return written


def render_images(figures: dict[str, go.Figure], formats: Sequence[str]) -> dict[tuple[str, str], bytes]:
    """``{(stem, format): bytes}`` for every figure and format."""
    engine = backend()
    if engine is None:
        raise InterlayerError("no backend for static figures: install kaleido or chromium")
    if engine == "kaleido":
        return {(stem, fmt): pio.to_image(fig, format=fmt, width=_width(fig), height=_height(fig))
                for stem, fig in figures.items() for fmt in formats}
    return _chromium_images(engine, figures, formats)


def _width(fig: go.Figure) -> int:
    return int(fig.layout.width or WIDTH)


def _height(fig: go.Figure) -> int:
    return int(fig.layout.height or HEIGHT)


def _chromium_images(chromium: str, figures: dict[str, go.Figure], formats: Sequence[str]) -> dict[tuple[str, str], bytes]:
    from plotly.offline import get_plotlyjs

    jobs = [(stem, fmt) for stem in figures for fmt in formats]
    specs = [json.loads(pio.to_json(figures[stem], validate=False)) for stem, _ in jobs]
    options = [{"format": fmt, "width": _width(figures[stem]), "height": _height(figures[stem])} for stem, fmt in jobs]
    script = ("var specs=" + json.dumps(specs).replace("</", "<\\/") + ";var opts=" + json.dumps(options) + ";"
              "(async function(){for(var i=0;i<specs.length;i++){var d=document.createElement('div');"
              "document.body.appendChild(d);var url=await Plotly.toImage({data:specs[i].data,layout:specs[i].layout},"
              "opts[i]);var p=document.createElement('pre');p.id='image-'+i;p.textContent=url;document.body.appendChild(p);"
              "Plotly.purge(d);d.remove();}var e=document.createElement('pre');e.id='done';document.body.appendChild(e);})();")
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{get_plotlyjs()}</script></head><body><script>{script}</script></body></html>"
    with tempfile.TemporaryDirectory(prefix="interlayer-figures-") as tmp:
        file = Path(tmp) / "figures.html"
        file.write_text(page, encoding="utf-8")
        command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-extensions",
                   "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp}/profile",
                   "--virtual-time-budget=600000", "--dump-dom", file.resolve().as_uri()]
        try:
            dom = subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False).stdout
        except subprocess.TimeoutExpired as err:
            raise InterlayerError(f"chromium took more than {CHROMIUM_TIMEOUT_S} s to draw the figures") from err
    return _decode(dom, jobs)


def _decode(dom: str, jobs: list[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
    import re

    found = {int(i): html.unescape(text) for i, text in re.findall(r'<pre id="image-(\d+)">(.*?)</pre>', dom, re.S)}
    if len(found) != len(jobs):
        raise InterlayerError(f"chromium drew {len(found)} of {len(jobs)} figures; the rest failed to render")
    images = {}
    for i, (stem, fmt) in enumerate(jobs):
        header, _, payload = found[i].partition(",")
        if ";base64" in header:
            images[(stem, fmt)] = base64.b64decode(payload)
        else:  # plotly's SVG data URL is percent-encoded text
            from urllib.parse import unquote

            images[(stem, fmt)] = unquote(payload).encode("utf-8")
    return images


__all__ = ["FORMATS", "backend", "check_formats", "figures_of", "render_images", "write_static_figures"]
