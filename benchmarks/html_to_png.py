"""A screenshot of a self-contained HTML page (a sweep's ``pareto.html``, a report) as a
PNG for the README, in Debian's headless chromium through playwright; no network.

    python benchmarks/html_to_png.py PAGE.html OUT.png [--width 1120] [--height 780]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1120)
    parser.add_argument("--height", type=int, default=780)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or not args.page.is_file():
        print(f"need chromium on PATH and an HTML file ({args.page})", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
            page.goto(args.page.resolve().as_uri())
            page.wait_for_selector(".plotly .main-svg", timeout=30_000)
            page.screenshot(path=str(args.out), full_page=False)
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
