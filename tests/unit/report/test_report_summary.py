"""The report's cross-layer summary (panels on one depth axis, each with its interval and
its layer of interest), two reports side by side, the user's own data flowing into its
sections, the config file holding them, and static figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

import interlayer
from interlayer.cli import dispatch
from interlayer.errors import InterlayerError
from interlayer.report import build_report
from interlayer.report.summary import Panel, panels_figure, where_table
from tests.tiny_models import make_tiny, make_tokenizer
from tests.unit.report.test_report import EVIL, TINY

WORDS = [{"fr": f"w{5 + i}", "zh": f"w{20 + i}", "en": f"w{40 + i}"} for i in range(10)]


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_panels_share_one_depth_convention_and_their_numbers_are_the_sections(model, tmp_path):
    files = build_report(model, tmp_path / "r.html", only="saturation,mexa,probes,logit_lens", profile=TINY,
                         progress=False)
    panels = {p.analysis: p for r in files.results.values() for p in r.panels}
    assert set(panels) == {"Logit lens", "Saturation", "MEXA", "Probe: language identity"}
    L = model.n_layers
    # hidden state i (MEXA, probe) is block i - 1: depth i / L; block l (lenses) is at (l + 1) / L
    mexa = panels["MEXA"]
    assert mexa.layers == [None, *range(L)] and mexa.depth == pytest.approx([i / L for i in range(L + 1)])
    assert panels["Saturation"].depth == pytest.approx([(l + 1) / L for l in panels["Saturation"].layers])
    # values are the sections' numbers, intervals computed independently
    from interlayer.intervals import proportion_interval

    sat = files.results["saturation"].numbers
    n = sat["tokens"]
    assert panels["Saturation"].value == pytest.approx(sat["match_final"])
    assert panels["Saturation"].low == pytest.approx([proportion_interval(round(v * n), n)[0] for v in sat["match_final"]])
    scores = files.results["mexa"].numbers["scores"]
    assert mexa.value == pytest.approx(np.mean([scores[l] for l in scores], 0))
    assert all(lo <= v + 1e-9 and v <= hi + 1e-9 for lo, v, hi in zip(mexa.low, mexa.value, mexa.high))
    best = int(np.argmax(mexa.value))
    assert mexa.marked and mexa.mark_layer == mexa.layers[best] and mexa.mark_what == "best aligned layer"
    probe = panels["Probe: language identity"]
    numbers = files.results["probes"].numbers
    assert probe.reference == pytest.approx(numbers["chance"]) and max(probe.high) <= 1.0
    first = next((i for i, low in enumerate(numbers["ci_low"]) if low > numbers["chance"]), None)
    assert probe.mark_layer == (None if first is None else probe.layers[first])
    kl = panels["Logit lens"]
    assert kl.value == pytest.approx(files.results["logit_lens"].numbers["sample_kl_to_final"], rel=1e-5)
    below = next((i for i, v in enumerate(kl.value) if v < 1.0), None)
    assert kl.mark_layer == below and kl.marked == (below is not None)
    # every panel has a sentence; the JSON keeps the panels and the "where things happen" rows
    assert all(p.sentence for p in panels.values())
    payload = json.loads(files.json.read_text())
    assert payload["n_layers"] == L and {r["analysis"] for r in payload["where"]} == set(panels)
    again = Panel.from_json(payload["sections"]["mexa"]["panels"][0])
    assert again.value == pytest.approx(mexa.value) and again.mark_layer == mexa.mark_layer
    html = files.html.read_text()
    assert "Where things happen" in html and 'id="layer-selector"' in html and "<details>" in html
    assert 'href="r.tables/mexa.mexa.csv"' in html


def test_summary_figure_is_small_multiples_with_intervals_and_marks():
    a = Panel("A", "nats", 4, [0, 1, 2, 3], [3.0, 2.0, 0.5, 0.0], [2.5, 1.5, 0.3, 0.0], [3.5, 2.5, 0.7, 0.0],
              "bootstrap", 2, "first below 1", "A falls.")
    b = Panel("B", "accuracy", 4, [None, 0, 1, 2, 3], [0.2, 0.4, 0.9, 0.9, 0.8], mark_layer=None, mark_what="",
              reference=0.25, reference_label="chance")
    fig = panels_figure({"": [a, b]})
    assert [t.name for t in fig.data if t.fill == "toself"] == ["A 95% interval"]  # B has no interval
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert lines[0].x == pytest.approx((0.25, 0.5, 0.75, 1.0)) and lines[1].x[0] == 0.0
    assert lines[0].xaxis == "x" and lines[1].xaxis == "x2"  # one panel each
    marks = [s for s in fig.layout.shapes if s.line.dash == "dash"]
    assert len(marks) == 1 and marks[0].x0 == pytest.approx(0.75)  # layer 2 of 4
    assert any(s.y0 == 0.25 and s.line.dash == "dot" for s in fig.layout.shapes)  # B's chance line
    table = where_table([a, b])
    assert table["layer of interest"].tolist() == ["layer 2", "none"] and table["value there"][0] == 0.5
    # two models: one line per model in every shared panel, each mark in its model's colour
    c = Panel("A", "nats", 8, list(range(8)), list(np.linspace(3, 0, 8)), mark_layer=5, mark_what="first below 1")
    both = panels_figure({"m1": [a, b], "m2": [c]})
    names = {t.name for t in both.data if t.mode == "lines+markers"}
    assert names == {"m1", "m2"}  # only panel A is shared
    assert sorted(s.x0 for s in both.layout.shapes if s.line.dash == "dash") == pytest.approx([0.75, 0.75])


def test_report_compare_draws_two_models_on_relative_depth(tmp_path, capsys):
    for name, arch in (("a", "llama"), ("b", "gpt2")):
        m = interlayer.load_model(make_tiny(arch), tokenizer=make_tokenizer(tmp_path / f"tok-{name}"))
        m.name = f"{name} {EVIL}"
        build_report(m, tmp_path / f"{name}.html", only="saturation,mexa", profile=TINY, progress=False)
    code = dispatch.main(["report", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.html"),
                          "--out", str(tmp_path / "cmp.html")])
    assert code == 0, capsys.readouterr().err
    html = (tmp_path / "cmp.html").read_text()
    assert EVIL not in html and "a &lt;script&gt;" in html and "b &lt;script&gt;" in html
    drawn = html.split('id="fig-compare"', 1)[1].split("(function(){var f=", 1)[1]
    spec = json.loads(drawn.split(';Plotly.newPlot("fig-compare"', 1)[0].replace("<\\/", "</"))
    lines = [t for t in spec["data"] if t.get("mode") == "lines+markers"]
    assert len(lines) == 4 and {t["legendgroup"] for t in lines} == {f"a {EVIL}", f"b {EVIL}"}
    assert all(t["x"][-1] == pytest.approx(1.0) for t in lines)  # each model's last layer at depth 1
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["schema"] == "interlayer.report-comparison" and len(saved["where"]) == 2
    # bad input: one line each
    assert dispatch.main(["report", "compare", str(tmp_path / "a.json"), "--out", str(tmp_path / "c2.html")]) == 2
    assert "at least two reports" in capsys.readouterr().err
    (tmp_path / "x.json").write_text('{"not": "a report"}')
    assert dispatch.main(["report", "compare", str(tmp_path / "a.json"), str(tmp_path / "x.json")]) == 2
    assert "is not an interlayer report's JSON" in capsys.readouterr().err
    (tmp_path / "mine.json").write_text("{}")  # not ours: never overwritten
    assert dispatch.main(["report", "compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out",
                          str(tmp_path / "mine.html")]) == 2
    assert (tmp_path / "mine.json").read_text() == "{}"


def test_the_users_word_pairs_steering_qa_and_text_flow_into_their_sections(model, tmp_path):
    from tests.unit.steering.test_evaluation import PAIRS, TEXT

    words = _lines(tmp_path / "words.jsonl", WORDS)
    steer = _lines(tmp_path / "steer.jsonl", [{"question": p.question, "answer_matching_behavior": p.matching,
                                               "answer_not_matching_behavior": p.not_matching} for p in PAIRS * 2])
    qa = _lines(tmp_path / "qa.jsonl", [{"question": f"w{5 + i} w{6 + i}", "answers": [f"w{7 + i}"],
                                        "passage": f"w{8 + i} w{7 + i} w9"} for i in range(4)])
    text = tmp_path / "text.txt"
    text.write_text(" ".join(TEXT))
    import dataclasses

    profile = dataclasses.replace(TINY, latent_words=8)  # 4 shots need 5 usable words
    files = build_report(model, tmp_path / "r.html", only="latent,saturation,iks,steering", profile=profile,
                         progress=False, word_pairs=words, steering_dataset=str(steer), qa_data=str(qa), text=text)
    results = files.results
    assert all(r.status == "ok" for r in results.values()), {n: r.error for n, r in results.items()}
    assert results["latent"].numbers["data"] == f"the word pairs of {words}" and "fr-zh" in results["latent"].numbers
    assert results["steering"].numbers["data"] == str(steer)
    assert results["iks"].numbers["data"].startswith(f"the questions of {qa}")
    assert results["saturation"].prose[0] == f"Data: 64 tokens of the text of {text}."
    from interlayer.lens import latent_language, saturation
    from interlayer.report.user_data import load_word_pairs

    src, tgt, table = load_word_pairs(words)
    alone = latent_language(model, src=src, tgt=tgt, latents=["en"], words=table, limit=profile.latent_words,
                            progress=False)
    assert results["latent"].numbers["fr-zh"]["p_target"] == pytest.approx(alone.to_json()["p_target"])
    sat = saturation(model, str(text), tokens=64, context_length=64, progress=False).to_frame()
    assert results["saturation"].numbers["match_final"] == pytest.approx(sat.match_final.tolist())
    saved = json.loads(files.json.read_text())["data"]
    assert saved["word_pairs"] == str(words) and saved["text"] == str(text)


@pytest.mark.parametrize("flag, content, message", [
    ("--word-pairs", '{"fr": "a", "zh": "b", "en": "c"}\n{"fr": "a", "en": "c"}\n', ":2: keys ['fr', 'en'] differ"),
    ("--word-pairs", '{"fr": "a", "xx": "b", "en": "c"}\n', ":1: unknown language 'xx'; valid codes: "),
    ("--word-pairs", '{"fr": "a", "en": "c", "zh": "b"}\n', ":1: needs a source and a target code first, then 'en'"),
    ("--word-pairs", '{"fr": "a", "zh": "b", "en": "c"}\nnot json\n', ":2 is not valid JSON"),
    ("--steering-dataset", '{"question": "q"}\n', ":1"),
    ("--qa-data", '[1, 2]', "data.json item 0 is a int, not an object with 'question' and 'answers'"),
    ("--text", None, "valid extensions: '.txt', '.jsonl', '.json'"),
])
def test_bad_user_data_is_one_line_before_the_model_loads(tmp_path, capsys, flag, content, message):
    path = tmp_path / ("data.csv" if content is None else "data.json" if flag == "--qa-data" else "data.jsonl")
    path.write_text(content or "a,b\n")
    code = dispatch.main(["report", "--model", str(tmp_path / "no-model"), flag, str(path), "--out",
                          str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r.html").exists()


def test_a_config_file_holds_all_the_users_data(tmp_path, capsys):
    words = _lines(tmp_path / "words.jsonl", WORDS)
    config = tmp_path / "report.toml"
    config.write_text(f'word_pairs = "{words}"\nsteering_dataset = "persona:openness"\nqa_data = "squad"\n'
                      f'facts = "{tmp_path / "f.jsonl"}"\nstatic_figures = "svg"\nprofile = "quick"\n')
    assert dispatch.main(["report", "--config", str(config), "--print-config", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["word_pairs"] == str(words) and printed["steering_dataset"] == "persona:openness"
    assert printed["qa_data"] == "squad" and printed["static_figures"] == "svg"
    with pytest.raises(InterlayerError, match="unknown format 'gif'; valid choices: 'png', 'svg'"):
        from interlayer.report.static_figures import check_formats

        check_formats("svg,gif")


def test_static_figures_are_written_as_svg_and_png(model, tmp_path):
    from interlayer.report.static_figures import backend

    if backend() is None:
        import os

        if os.environ.get("INTERLAYER_REQUIRE_BROWSER"):  # CI installs chromium: no silent skip there
            pytest.fail("STATIC FIGURES CANNOT RUN: neither kaleido nor chromium")
        pytest.skip("neither kaleido nor chromium: static figures cannot be drawn here")
    files = build_report(model, tmp_path / "r.html", only="saturation,mexa", profile=TINY, progress=False,
                         static_figures="svg,png")
    folder = tmp_path / "r.figures"
    expected = {"summary", *(f"{n}-{i}" for n, r in files.results.items() for i in range(len(r.figures)))}
    assert {p.stem for p in folder.glob("*.svg")} == expected == {p.stem for p in folder.glob("*.png")}
    svg = (folder / "summary.svg").read_text()
    assert svg.lstrip().startswith("<svg") and "relative depth" in svg
    assert (folder / "mexa-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
