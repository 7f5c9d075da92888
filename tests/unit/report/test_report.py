"""The report on a tiny model: every section it can run, numbers equal to the methods
run on their own, one plotly.js, escaping, failure isolation, resume, bad input."""

from __future__ import annotations

import json
import re

import pytest

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.errors import InterlayerError
from interlayer.report import Profile, build_report, select_sections
from interlayer.report import sections_layers, sections_methods
from tests.tiny_models import make_tiny, make_tokenizer

TINY = Profile("test", prompts=2, sample_tokens=64, latent_words=4, mexa_languages=3, mexa_sentences=6, probe_folds=2,
               iks_questions=2, iks_steps=2, consistency_questions=2, consistency_paths=2, consistency_tokens=4,
               steering_pairs=8, steering_items=4, sae_tokens=64)
EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>"


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def test_report_sections_numbers_escaping_and_resume(model, tmp_path, monkeypatch):
    model.name = f"tiny {EVIL}"
    monkeypatch.setattr(sections_layers, "EXAMPLE_PROMPTS", (("w5 w6 " + EVIL, " w7"), ("w8 w9", " w10")))
    from tests.unit.steering.test_evaluation import PAIRS

    monkeypatch.setattr(sections_methods, "STEERING_DATASET", PAIRS * 2)  # words the tiny tokenizer knows
    out = tmp_path / "r.html"
    files = build_report(model, out, skip="consistency", profile=TINY, progress=False)
    html = out.read_text()
    results = files.results
    assert set(results) == {"model", "logit_lens", "latent", "saturation", "mexa", "probes", "iks", "tracing",
                            "steering"}
    # the rendering bugs of the review: the steering star beside its number, every MEXA language labelled
    steer = results["steering"].figures[0]
    cells = [t for trace in steer.data if trace.type == "heatmap" and trace.text is not None for row in trace.text
             for t in row]
    assert sum(t.endswith(" ★") for t in cells) == 1 and not [t for t in steer.data if t.type == "scatter"]
    mexa_fig = results["mexa"].figures[0]
    assert len(mexa_fig.layout.yaxis.ticktext) == len(results["mexa"].numbers["scores"])
    traced = results["tracing"].numbers
    assert traced["scanned"] >= traced["n_facts"] and len(traced["facts"]) == traced["n_facts"]
    assert traced["known_only"] and traced["samples"] == TINY.trace_samples
    # the word-level tiny tokenizer has none of the latent-language words: that section fails, the rest render
    assert results["latent"].status == "failed" and "failed" in html
    assert all(r.status == "ok" for n, r in results.items() if n != "latent"), {n: r.error for n, r in results.items()}
    # plotly.js inlined once, the layer selector's script, one drawing per figure
    assert html.count("<script>") == 2 + html.count("Plotly.newPlot(")
    assert html.count("Plotly.newPlot(") == 1 + sum(len(r.figures) for r in results.values())
    assert not re.search(r"<(script|link|img|iframe)[^>]*(src|href)=", html)  # nothing loaded from elsewhere
    # user text is escaped everywhere: in the text and inside figure specs
    assert EVIL not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # numbers equal the methods run on their own
    from interlayer.lens import saturation
    from interlayer.model.loading import SAMPLE_TEXT
    from interlayer.probes import mexa

    alone = saturation(model, str(SAMPLE_TEXT), tokens=64, context_length=64, progress=False).to_frame()
    assert results["saturation"].numbers["match_final"] == pytest.approx(alone.match_final.tolist())
    assert results["saturation"].numbers["match_next"] == pytest.approx(alone.match_next.tolist())
    langs = results["mexa"].numbers["scores"]
    ref = mexa(model, list(langs), n=6, progress=False)
    assert results["mexa"].numbers["scores"] == ref.scores  # the same hits, exactly
    # report.json holds every section's numbers; tables as CSV; parts for resume
    payload = json.loads(files.json.read_text())
    assert payload["sections"]["saturation"]["numbers"]["tokens"] == 64
    assert (files.tables / "saturation.saturation.csv").is_file()
    assert (files.parts / "mexa.json").is_file()
    # a rerun with the same options reuses every finished section (and retries the failed one)
    import dataclasses

    from interlayer.report import build as build_module

    calls = []

    def spy(section):
        def run(ctx):
            calls.append(section.name)
            return section.run(ctx)
        return dataclasses.replace(section, run=run)

    monkeypatch.setattr(build_module, "SECTIONS", tuple(spy(s) for s in build_module.SECTIONS))
    again = build_report(model, out, skip="consistency", profile=TINY, progress=False)
    assert calls == ["latent"]  # only the failed section ran again
    assert again.results["mexa"].numbers == results["mexa"].numbers and again.results["latent"].status == "failed"
    build_report(model, out, only="model,saturation", profile=TINY, progress=False)
    assert calls == ["latent"]  # other options, the same sections: still reused


def test_report_bad_input(model, tmp_path, capsys):
    with pytest.raises(InterlayerError, match="valid sections: 'model', 'logit_lens'"):
        select_sections(only="mexa,lens")
    with pytest.raises(InterlayerError, match="needs an SAE"):
        select_sections(only="sae")
    assert cli.main(["report", "--only", "nope", "--out", str(tmp_path / "r.html")]) == 2
    assert "unknown report section 'nope'" in capsys.readouterr().err
    assert cli.main(["report", "--out", str(tmp_path / "r.txt")]) == 2
    assert "valid choices: '.html'" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli.main(["report", "--out", str(tmp_path / "file" / "r.html")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    # an SAE for another model: refused before any computation
    from interlayer.saes import SAE, SAEConfig

    sae = SAE(SAEConfig(d_in=model.d_model + 1, d_sae=8, arch="relu", model="other", site="resid_post.1"))
    sae.save(tmp_path / "sae")
    with pytest.raises(InterlayerError, match="width"):
        build_report(model, tmp_path / "r.html", sae=str(tmp_path / "sae"), profile=TINY, progress=False)
    assert not (tmp_path / "r.html").exists()
    assert cli.main(["report", "--sae", str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")]) == 2
    assert "--sae: " in (err := capsys.readouterr().err) and "does not exist" in err


def test_report_sae_panel_equals_evaluate_sae(model, tmp_path):
    from interlayer.model.loading import SAMPLE_TEXT
    from interlayer.saes import SAE, SAEConfig, evaluate_sae

    import torch

    torch.manual_seed(0)
    bad = SAE(SAEConfig(d_in=model.d_model, d_sae=16, arch="relu", model=model.name, site="resid_post.1"))
    bad.save(tmp_path / "bad")  # random weights: refused by the check on load, the panel says why
    files = build_report(model, tmp_path / "bad.html", only="model,sae", sae=str(tmp_path / "bad"), profile=TINY,
                         progress=False)
    assert files.results["sae"].status == "failed" and "worse than" in files.results["sae"].error
    d = model.d_model  # the exact ReLU SAE [I, -I]: passes the check
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, arch="relu", model=model.name, site="resid_post.1",
                        normalization="none", apply_b_dec_to_input=False))
    eye = torch.eye(d)
    sae.load_tensors({**sae.state_dict(), "W_enc": torch.cat([eye, -eye], 1), "W_dec": torch.cat([eye, -eye], 0),
                      "b_enc": torch.zeros(2 * d), "b_dec": torch.zeros(d)}, "the exact SAE")
    sae.save(tmp_path / "sae")
    files = build_report(model, tmp_path / "r.html", only="model,sae", sae=str(tmp_path / "sae"), profile=TINY,
                         progress=False)
    panel = files.results["sae"]
    assert panel.status == "ok", panel.error
    assert len(panel.figures) == 3 and set(panel.tables) == {"sae_metrics", "sae_top_contexts"}
    direct = evaluate_sae(SAE.load(tmp_path / "sae"), model, str(SAMPLE_TEXT), "resid_post.1", tokens=TINY.sae_tokens,
                          context_length=64, progress=False)
    for key in ("nmse", "explained_variance", "l0"):
        assert panel.numbers["metrics"][key] == pytest.approx(direct.metrics[key], rel=1e-5)
    assert panel.numbers["metrics"]["ce_loss_recovered"] == pytest.approx(direct.spliced["ce_loss_recovered"], rel=1e-5)
    contexts = panel.tables["sae_top_contexts"]
    assert len(contexts) > 0 and contexts.context.str.contains(r"\[").all()
    from interlayer.saes import top_contexts

    alone = top_contexts(SAE.load(tmp_path / "sae"), model, str(SAMPLE_TEXT), tokens=TINY.sae_tokens, context_length=64)
    assert contexts.context.tolist() == alone.context.tolist() and contexts.latent.tolist() == alone.latent.tolist()
    assert contexts.activation.tolist() == pytest.approx(alone.activation.tolist())
    # an SAE for a site this model lacks is refused before any computation
    SAE(SAEConfig(d_in=model.d_model, d_sae=8, arch="relu", site="resid_post.7")).save(tmp_path / "sae7")
    with pytest.raises(InterlayerError, match="out of range"):
        build_report(model, tmp_path / "r2.html", sae=str(tmp_path / "sae7"), profile=TINY, progress=False)


def test_a_shared_pass_is_dropped_once_no_remaining_section_uses_it():
    from interlayer.report.base import ReportContext, SHARED_USERS

    ctx = ReportContext(None, None)  # type: ignore[arg-type]
    calls = []
    for name in ("flores", "sample", "other"):
        ctx.shared(name, lambda n=name: calls.append(n) or n)
    assert SHARED_USERS["flores"] == ("mexa", "probes")
    assert ctx.release(["probes", "iks"]) == ["sample"]  # flores still has its probe, 'other' is kept to the end
    assert ctx.release(["iks"]) == ["flores"]
    assert ctx.release([]) == ["other"]  # the end of the report
    assert ctx.shared("flores", lambda: "again") == "again" and calls == ["flores", "sample", "other"]


def test_plot_text_escapes_markup_and_keeps_quotes():
    from interlayer.plot_text import plot_text

    assert plot_text('"quoted" <b>&') == '"quoted" &lt;b&gt;&amp;'  # plotly.js shows &quot; literally
    assert plot_text("it's") == "it's"


def test_the_users_facts_flow_into_the_tracing_section_escaped(model, tmp_path):
    facts = tmp_path / "<img src=x onerror=alert(1)>.jsonl"
    facts.write_text('{"prompt": "w5 w9 w14 w22", "subject": "w9", "target": "w17"}\n'
                     '{"prompt": "w6 w7 w8", "subject": "w7 w8", "target": "w30"}\n')
    out = tmp_path / "r.html"
    files = build_report(model, out, only="tracing", profile=TINY, facts=facts, progress=False)
    numbers = files.results["tracing"].numbers
    assert files.results["tracing"].status == "ok", files.results["tracing"].error
    assert numbers["data"] == f"the facts of {facts}" and numbers["scanned"] == 2
    html = out.read_text()
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_the_users_prompts_flow_into_the_logit_lens_and_bad_ones_are_one_line(model, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "w5 w6 \\"q\\" <i>x</i>", "target": " w7"}\n')
    files = build_report(model, tmp_path / "r.html", only="logit_lens", profile=TINY, prompts=prompts, progress=False)
    numbers = files.results["logit_lens"].numbers
    assert numbers["data"] == f"the prompts of {prompts}" and numbers["prompts"] == ['w5 w6 "q" <i>x</i>']
    html = (tmp_path / "r.html").read_text()
    assert "<i>x</i>" not in html
    prompts.write_text('{"prompt": "w5"}\n')
    from interlayer.cli import dispatch

    code = dispatch.main(["report", "--model", str(tmp_path / "none"), "--prompts", str(prompts),
                          "--out", str(tmp_path / "x.html")])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"{prompts}:1: missing field 'target' (each line needs prompt, target)")
