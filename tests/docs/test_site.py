"""The documentation site: ``mkdocs build --strict`` succeeds (no broken links, anchors
or references, no docstring warnings), and every page opens in Debian's chromium from
``file://`` with no console error and no request leaving the page (fonts, scripts and
search are offline), and every tutorial figure draws.

The build executes the notebooks that ``tests/integration/test_notebook.py`` has not
already executed with the current sources (``docs/hooks/notebooks.py``); the conftest
runs these tests last so that it reuses those runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.report.test_report_browser import ARTIFACTS, CHROMIUM_FLAGS, _browser_or_skip

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration, pytest.mark.docs_site]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    env.pop("INTERLAYER_DOCS_FAST", None)
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-4000:]}\n{done.stderr[-8000:]}"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [], warnings
    return out


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        for value in (item.values() if isinstance(item, dict) else [item]):
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_nav_page_is_built(site):
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))
    pages = _nav_pages(config["nav"])
    assert len(pages) >= 30
    for page in pages:
        built = site / page.replace(".md", ".html")
        assert built.is_file() and built.stat().st_size > 2000, page
    assert (site / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    for command in ("interlayer cache", "interlayer sae train", "interlayer report", "interlayer probes mexa",
                    "interlayer steer sweep", "interlayer lens iks"):
        assert command in cli, command


def test_pages_render_offline_and_figures_draw(site):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    # 404.html is served by a web server at the site root (absolute asset paths); not a page to browse
    pages = sorted(p for p in site.rglob("*.html") if p.name != "404.html")
    problems, requests, figures = [], [], {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
                    else None)
            for path in pages:
                errors = []
                page.on("console", on_console := (lambda msg: errors.append(msg.text) if msg.type == "error" else None))
                page.on("pageerror", on_error := (lambda exc: errors.append(str(exc))))
                page.goto(path.as_uri())
                wanted = page.evaluate("document.querySelectorAll('div.nb-figure').length")
                if wanted:
                    # every figure div drawn by plotly, each with its own SVG
                    page.wait_for_function("Array.from(document.querySelectorAll('div.nb-figure')).every("
                                           "d => d.dataset.drawn && d.querySelector('svg.main-svg'))", timeout=60_000)
                    figures[path.name] = wanted
                    if path.name == "quickstart.html":
                        ARTIFACTS.mkdir(exist_ok=True)
                        page.screenshot(path=str(ARTIFACTS / "docs-quickstart.png"), full_page=False)
                heading = page.evaluate("(document.querySelector('article h1') || {}).textContent || ''")
                if not heading.strip():
                    problems.append(f"{path.relative_to(site)}: no heading")
                problems += [f"{path.relative_to(site)}: {e}" for e in errors]
                page.remove_listener("console", on_console)
                page.remove_listener("pageerror", on_error)
            # search runs offline: the index is inlined by the offline plugin
            page.goto((site / "index.html").as_uri())
            page.keyboard.press("/")
            page.keyboard.type("weighted_mean")
            page.wait_for_selector(".md-search-result__item", timeout=30_000)
        finally:
            browser.close()
    assert problems == [], problems
    assert requests == [], requests
    # every tutorial's figures drew (the store notebook shows tables and tensors, no figure)
    tutorials = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert set(figures) == {f"{name}.html" for name in tutorials if name != "store"}, figures
