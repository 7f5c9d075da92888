"""The docs hooks that generate pages: what they generate is complete and safe."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
import notebooks  # noqa: E402
import reference  # noqa: E402
import tables  # noqa: E402


def test_cli_page_has_every_command_and_its_flags():
    from interlayer.cli.dispatch import discover

    page = reference.cli_page()
    for name, command in discover().items():
        assert f"## `interlayer {name}`" in page, name
    assert "--storage-dtype" in page and "--tokens-per-step" in page
    # deprecated aliases are not listed as commands of their own
    for name, command in discover().items():
        for alias in command.aliases:
            assert f"## `interlayer {alias}`" not in page


def test_architectures_page_has_every_architecture():
    from interlayer import ARCHITECTURES

    page = reference.architectures_page()
    for model_type, spec in ARCHITECTURES.items():
        assert f"| `{model_type}` | {spec.family} |" in page


def test_api_pages_have_one_block_per_public_name():
    pages = reference.api_pages()
    for module in reference.API_MODULES:
        for name in reference.public_names(module):
            assert f"::: {reference._identifier(module, name)}\n" in pages[module], (module, name)
    assert "::: interlayer.probes.mexa.mexa\n" in pages["interlayer.probes"]
    assert reference.plain_roles(":func:<code>~interlayer.collect</code> :class:<code>Edit</code>") == "<code>collect</code> <code>Edit</code>"


def test_home_page_links_into_the_site():
    page = reference.home_page()
    assert "](docs/" not in page and "](notebooks/)" not in page and "](CHANGELOG.md)" not in page


def test_figure_output_cannot_close_its_script_element():
    evil = "</script><script>alert(1)</script>&amp;"
    html = notebooks.render_output({"output_type": "display_data", "data": {
        notebooks._PLOTLY: {"data": [{"type": "bar", "x": [evil], "y": [1]}], "layout": {"title": {"text": evil}}}}},
        "fig-1")
    assert "</script><script>" not in html.split('id="fig-1-data">', 1)[1].rsplit("</script>", 1)[0]
    payload = html.split('id="fig-1-data">', 1)[1].rsplit("</script>", 1)[0]
    assert json.loads(payload)["layout"]["title"]["text"] == evil


def test_text_outputs_are_escaped():
    html = notebooks.render_output({"output_type": "stream", "name": "stdout", "text": "<b>x</b>\x1b[31m"}, "f")
    assert "<b>" not in html and "&lt;b&gt;" in html and "\x1b" not in html


def test_rendered_page_keeps_outputs_out_of_markdown():
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1 + 1")]
    nb.cells[1].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    markdown, outputs = notebooks.render(nb, "t", "../")
    assert "# Title" in markdown and "```python\n1 + 1\n```" in markdown
    (placeholder, html), = outputs.items()
    assert f"<!--{placeholder}-->" in markdown and "<pre" in html and ">2</pre>" in html
    assert notebooks.fill(f"<p>x</p><!--{placeholder}-->", outputs).endswith(html)


def test_notebook_key_covers_the_library(tmp_path, monkeypatch):
    name = notebooks.names()[0]
    key = notebooks.source_key(name)
    assert key == notebooks.source_key(name)
    fake = tmp_path / "lib"
    (fake / "interlayer").mkdir(parents=True)
    (fake / "interlayer" / "x.py").write_text("a = 1\n")
    (fake / "notebooks").mkdir()
    (fake / "notebooks" / f"{name}.ipynb").write_bytes((notebooks.NOTEBOOKS / f"{name}.ipynb").read_bytes())
    monkeypatch.setattr(notebooks, "ROOT", fake)
    monkeypatch.setattr(notebooks, "NOTEBOOKS", fake / "notebooks")
    before = notebooks.source_key(name)
    (fake / "interlayer" / "x.py").write_text("a = 2\n")
    assert notebooks.source_key(name) != before


def test_unknown_generated_table_is_an_error():
    with pytest.raises(ValueError, match="unknown generated table 'nope'"):
        tables.fill("<!-- generated: nope -->")
    assert "| result file" in tables.fill("<!-- generated: benchmark-results -->")


def test_findings_tables_carry_the_result_files_numbers():
    import csv

    rows = list(csv.DictReader((tables.RESULTS / "sae_gemma_sweep_pareto.csv").open(encoding="utf-8")))
    table = tables.fill("<!-- generated: sae-sweep -->")
    assert table.count("\n") >= len(rows)  # one line per member, plus the header
    for row in rows:
        line = next(l for l in table.splitlines() if f"`{row['member']}`" in l or f" {row['member']} " in l)
        assert f"| {tables._l0(row['l0'])} | {float(row['explained_variance']):.3f} |" in line, line
    qa = tables.fill("<!-- generated: knowledge-qa -->")
    for path in tables.RESULTS.glob("knowledge_findings_*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        assert record["model"] in qa


def test_scale_table_has_every_command_of_every_result_file():
    table = tables.fill("<!-- generated: scale-memory -->")
    paths = sorted(tables.RESULTS.glob("scale_cpu_*.json"))
    assert paths, "the scale results are committed"
    for path in paths:
        record = json.loads(path.read_text(encoding="utf-8"))
        for name, task in record["tasks"].items():
            line = next(l for l in table.splitlines() if l.startswith(f"| {record['config']} (") and f"| {name} |" in l)
            assert f"| {task['peak_rss_mb']:,.0f} |" in line, line
