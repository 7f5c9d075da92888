"""mkdocs hooks: the pages that are generated, never typed.

* ``reference/cli.md``: every command's ``--help``, from ``build_parser(discover())``;
* ``reference/api/*.md``: one ``:::`` block per public name (each package's ``__all__``),
  rendered by mkdocstrings from the docstrings;
* ``reference/architectures.md``: the table of ``interlayer.ARCHITECTURES``;
* ``tutorials/*.md``: the notebooks, executed in a Jupyter kernel (``notebooks.py``);
* tables marked ``<!-- generated: NAME -->`` in a page (``tables.py``);
* ``assets/plotly.min.js``: the plotly.js of the installed plotly package (offline figures).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import notebooks  # noqa: E402
import reference  # noqa: E402
import tables  # noqa: E402

_outputs: dict[str, dict[str, str]] = {}

API_SOURCE = HERE.parents[1] / "build" / "api-source"


@event_priority(100)  # before mkdocstrings reads its paths
def on_config(config, **kwargs):
    """Lay the package out for mkdocstrings as it is installed: the method folders
    (``lens/``, ``saes/``, ...) are sub-packages of ``interlayer`` only through
    ``package-dir``, so ``build/api-source/interlayer`` copies them into one tree that
    griffe reads statically (it does not follow symlinked folders)."""
    root = HERE.parents[1]
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "data")
    if API_SOURCE.exists():
        shutil.rmtree(API_SOURCE)
    shutil.copytree(root / "interlayer", API_SOURCE / "interlayer", ignore=ignore)
    for package in reference.METHOD_PACKAGES:
        shutil.copytree(root / package, API_SOURCE / "interlayer" / package, ignore=ignore)
    return config


def on_files(files, config, **kwargs):
    """Add the generated pages and assets to the site."""
    import plotly

    def add(uri: str, content: str | bytes) -> None:
        existing = files.get_file_from_path(uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, uri, content=content))

    add("index.md", reference.home_page())
    add("reference/cli.md", reference.cli_page())
    add("reference/architectures.md", reference.architectures_page())
    for module, page in reference.api_pages().items():
        add(f"reference/api/{module}.md", page)
    add("assets/plotly.min.js", (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes())
    # INTERLAYER_DOCS_FAST=1 (for writing pages, never for `make docs`): the tutorials
    # are shown from a current stored run where there is one, else without outputs.
    fast = os.environ.get("INTERLAYER_DOCS_FAST") == "1"
    for name in notebooks.names():
        markdown, outputs = notebooks.render((notebooks.stored(name) or notebooks.source(name)) if fast else notebooks.executed(name), name, "../")
        _outputs[f"tutorials/{name}.md"] = outputs
        add(f"tutorials/{name}.md", markdown)
    return files


def on_page_markdown(markdown, page, config, files, **kwargs):
    """Fill each ``<!-- generated: NAME -->`` marker with its generated table."""
    return tables.fill(markdown)


def on_page_content(html, page, config, files, **kwargs):
    """Insert the notebooks' rendered outputs after markdown conversion."""
    if page.file.src_uri.startswith("reference/api/"):
        return reference.plain_roles(html)
    outputs = _outputs.get(page.file.src_uri)
    return notebooks.fill(html, outputs) if outputs else html
