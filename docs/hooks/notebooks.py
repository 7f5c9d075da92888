"""The tutorials: each notebook of ``notebooks/`` executed in a real Jupyter kernel, and
rendered as a documentation page with its outputs.

The notebooks are kept in the repository without outputs. ``execute`` runs one through
nbclient in an ``ipykernel`` kernel (the interpreter running this code), top to bottom,
in the ``notebooks/`` folder, and stores the executed copy under ``build/notebooks/``
with a key: the sha256 of the notebook and of every library source file. The tests
execute every notebook (and check its results in the same kernel); the docs build takes
the stored copy when its key is current and executes the notebook itself otherwise.

Figures are rendered offline: the kernel runs with ``PLOTLY_RENDERER=plotly_mimetype``,
so a figure's output is its plotly JSON, and the page draws it with the plotly.js that
the plotly package ships, copied into the site (``assets/plotly.min.js``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "notebooks"
LIBRARY = ("interlayer", "lens", "saes", "probes", "steering", "report", "tracing")
KEY = "interlayer_docs_key"
CHECK_TAG = "interlayer-test-check"
TIMEOUT_S = 1800


def names() -> list[str]:
    """The notebooks, by file stem, sorted."""
    return sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))


def source_key(name: str) -> str:
    """sha256 over the notebook's bytes and every library ``.py`` file (path and bytes)."""
    digest = hashlib.sha256((NOTEBOOKS / f"{name}.ipynb").read_bytes())
    for folder in LIBRARY:
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def execute(name: str, *, checks: str | None = None, timeout: int = TIMEOUT_S):
    """Run ``notebooks/<name>.ipynb`` in a fresh kernel; ``checks`` (Python source) runs
    after the last cell in the same kernel, so a failed assertion fails the run. Returns
    the executed notebook without the check cell, also stored under ``build/notebooks/``."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    if checks:
        nb.cells.append(nbformat.v4.new_code_cell(checks, metadata={"tags": [CHECK_TAG]}))
    key = source_key(name)
    saved = os.environ.get("PLOTLY_RENDERER")
    os.environ["PLOTLY_RENDERER"] = "plotly_mimetype"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if saved is None:
            os.environ.pop("PLOTLY_RENDERER", None)
        else:
            os.environ["PLOTLY_RENDERER"] = saved
    nb.cells = [c for c in nb.cells if CHECK_TAG not in c.get("metadata", {}).get("tags", [])]
    nb.metadata[KEY] = key
    EXECUTED.mkdir(parents=True, exist_ok=True)
    tmp = EXECUTED / f".{name}.ipynb.tmp"
    nbformat.write(nb, tmp)
    tmp.replace(EXECUTED / f"{name}.ipynb")
    return nb


def source(name: str):
    """The notebook as committed (no outputs)."""
    import nbformat

    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def stored(name: str):
    """The stored executed copy when its key is current, else ``None``."""
    import nbformat

    path = EXECUTED / f"{name}.ipynb"
    if path.is_file():
        nb = nbformat.read(path, as_version=4)
        if nb.metadata.get(KEY) == source_key(name):
            return nb
    return None


def executed(name: str):
    """The executed notebook: the stored copy when its key is current, else a fresh run."""
    return stored(name) or execute(name)


# --- rendering --------------------------------------------------------------------

_PLOTLY = "application/vnd.plotly.v1+json"


def _script_json(value) -> str:
    """JSON safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` survive."""
    return (json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def render_output(output, figure_id: str) -> str:
    """One cell output as HTML: a plotly figure, an image, HTML (tables), or text."""
    kind = output.get("output_type")
    if kind == "stream":
        return f'<pre class="nb-stream nb-{output.get("name", "stdout")}">{html.escape(_ANSI.sub("", _text(output["text"])))}</pre>'
    if kind == "error":  # nbclient stops on errors; kept for completeness
        return f'<pre class="nb-error">{html.escape(_ANSI.sub("", chr(10).join(output.get("traceback", []))))}</pre>'
    data = output.get("data", {})
    if _PLOTLY in data:
        return (f'<div class="nb-figure" id="{figure_id}"></div>'
                f'<script type="application/json" id="{figure_id}-data">{_script_json(data[_PLOTLY])}</script>')
    for mime in ("image/svg+xml", "image/png", "image/jpeg"):
        if mime in data:
            payload = _text(data[mime])
            if mime == "image/svg+xml":
                payload = base64.b64encode(payload.encode()).decode()
            return f'<img class="nb-image" alt="figure" src="data:{mime};base64,{payload.strip()}">'
    if "text/html" in data:
        return f'<div class="nb-html">{_text(data["text/html"])}</div>'
    if "text/markdown" in data:
        return f'<div class="nb-html">{html.escape(_text(data["text/markdown"]))}</div>'
    if "text/plain" in data:
        return f'<pre class="nb-result">{html.escape(_ANSI.sub("", _text(data["text/plain"])))}</pre>'
    return ""


def render(nb, name: str, asset_prefix: str) -> tuple[str, dict[str, str]]:
    """The page's markdown, with a placeholder comment where each cell's outputs go, and
    the HTML of those outputs by placeholder (inserted after markdown conversion)."""
    parts = [f'<script src="{asset_prefix}assets/plotly.min.js"></script>',
             f'<script src="{asset_prefix}assets/notebook-figures.js"></script>', ""]
    outputs: dict[str, str] = {}
    figures = 0
    for index, cell in enumerate(nb.cells):
        source = _text(cell.source)
        if cell.cell_type == "markdown":
            parts += [source, ""]
        elif cell.cell_type == "code":
            parts += ["```python", source, "```", ""]
            rendered = []
            for output in cell.get("outputs", []):
                figures += 1
                rendered.append(render_output(output, f"nb-{name}-figure-{figures}"))
            if any(rendered):
                placeholder = f"nb-output-{index}"
                outputs[placeholder] = '<div class="nb-outputs">' + "".join(rendered) + "</div>"
                parts += [f"<!--{placeholder}-->", ""]
    parts += [f"*This page is `notebooks/{name}.ipynb`, executed in a Jupyter kernel when the site was built.*", ""]
    return "\n".join(parts), outputs


def fill(page_html: str, outputs: dict[str, str]) -> str:
    """Put each cell's rendered outputs where its placeholder is."""
    for placeholder, content in outputs.items():
        page_html = page_html.replace(f"<!--{placeholder}-->", content)
    return page_html
