"""The report in a real headless browser (Debian's chromium through playwright): every
figure draws an SVG, the console stays clean, nothing is fetched from the network, and
no injected script runs. The screenshot is kept in ``test-artifacts/``.

Where chromium or playwright is missing the test is skipped with the reason; CI sets
``INTERLAYER_REQUIRE_BROWSER=1`` (after installing chromium), which turns that skip
into a failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import interlayer
from interlayer.report import build_report, sections_layers
from tests.tiny_models import make_tiny, make_tokenizer
from tests.unit.report.test_report import EVIL, TINY

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--disable-extensions"]


def _browser_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    reason = None
    if chromium is None:
        reason = "no chromium on PATH (install Debian's chromium: apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is not installed (pip install playwright)"
    if reason:
        if os.environ.get("INTERLAYER_REQUIRE_BROWSER"):
            pytest.fail(f"BROWSER TEST CANNOT RUN: {reason}")
        pytest.skip(f"BROWSER TEST SKIPPED: {reason}")
    return chromium


def _watched_page(browser, errors: list, dialogs: list, requests: list | None = None):
    """A page that records console errors, page errors, dialogs (an injected script that
    ran) and, with ``requests``, every request that leaves the file."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:", "blob:"))
                else None)
    return page


def test_report_renders_in_chromium(tmp_path, monkeypatch):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    model.name = f"tiny {EVIL}"
    monkeypatch.setattr(sections_layers, "EXAMPLE_PROMPTS", (("w5 w6 " + EVIL, " w7"), ("w8 w9", " w10")))
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "w5 w9 w14 w22", "subject": "w9", "target": "w17"}\n')
    files = build_report(model, tmp_path / "report.html", only="model,logit_lens,saturation,mexa,probes,latent,tracing",
                         profile=TINY, progress=False, facts=facts)
    assert files.results["tracing"].status == "ok", files.results["tracing"].error
    n_figures = 1 + sum(len(r.figures) for r in files.results.values())  # + the cross-layer summary
    errors, requests, dialogs = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = _watched_page(browser, errors, dialogs, requests)
            page.goto(files.html.as_uri())
            page.wait_for_function(f"document.querySelectorAll('.figure svg.main-svg').length >= {n_figures}",
                                   timeout=30_000)
            drawn = page.evaluate("Array.from(document.querySelectorAll('.figure')).map(d => "
                                  "d.querySelectorAll('svg.main-svg').length)")
            # the layer selector moves one highlighted layer across every layer-wise figure
            page.evaluate(
                "(() => {const r = document.getElementById('layer-range'); r.value = '1';"
                " r.dispatchEvent(new Event('input'));})()")
            page.wait_for_function("document.getElementById('layer-value').textContent.startsWith('layer 1')")
            highlighted = page.evaluate(
                "Array.from(document.querySelectorAll('.figure[data-layer-axes]')).map(d => ["
                "d.id, JSON.parse(d.dataset.layerAxes).length, (d.layout.shapes || [])"
                ".filter(s => s.name === 'layer-highlight').map(s => s.xref.startsWith('x') && !s.xref.endsWith('domain') ?"
                " s.x0 : s.y0)])")
            label = page.inner_text("#layer-value")
            page.evaluate("interlayerHighlight(-1)")  # the embeddings, and no duplicated highlight
            again = page.evaluate("document.getElementById('fig-summary').layout.shapes"
                                  ".filter(s => s.name === 'layer-highlight').length")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report-tiny.png"), full_page=False)
        finally:
            browser.close()
    assert len(drawn) == n_figures and all(count >= 1 for count in drawn), drawn
    L = model.n_layers
    by_id = {fid: (n, values) for fid, n, values in highlighted}
    assert len(by_id) >= 5 and all(len(values) == n for n, values in by_id.values()), by_id
    summary = by_id["fig-summary"][1]
    assert len(summary) >= 4 and summary == pytest.approx([2 / L] * len(summary))  # layer 1 at depth (1 + 1) / L
    assert by_id["fig-mexa-0"][1] == [2]  # hidden state 2 is layer 1's output
    assert label.startswith(f"layer 1 (relative depth {2 / L:.2f})") and again == by_id["fig-summary"][0]
    assert errors == [], errors
    assert requests == [], requests
    assert dialogs == [], f"injected script ran: {dialogs}"
    assert (ARTIFACTS / "report-tiny.png").stat().st_size > 10_000


def test_report_comparison_renders_in_chromium(tmp_path):
    chromium = _browser_or_skip()
    from playwright.sync_api import sync_playwright

    from interlayer.report.compare import write_comparison

    for name, arch in (("a", "llama"), ("b", "gpt2")):
        model = interlayer.load_model(make_tiny(arch), tokenizer=make_tokenizer(tmp_path / f"tok-{name}"))
        model.name = f"{name} {EVIL}"
        build_report(model, tmp_path / f"{name}.html", only="saturation,mexa", profile=TINY, progress=False)
    out = write_comparison([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "compare.html")
    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = _watched_page(browser, errors, dialogs)
            page.goto(out.as_uri())
            page.wait_for_selector("#fig-compare svg.main-svg", timeout=30_000)
            legend = page.evaluate("Array.from(document.querySelectorAll('#fig-compare .legendtext'))"
                                   ".map(e => e.textContent)")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report-compare-tiny.png"), full_page=False)
        finally:
            browser.close()
    assert sorted(legend) == [f"a {EVIL}", f"b {EVIL}"] and errors == [] and dialogs == []
