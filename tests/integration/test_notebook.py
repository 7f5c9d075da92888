"""Every notebook runs top to bottom in a real Jupyter kernel (nbclient + ipykernel) on
the embedded model, and its results are checked in that kernel after its last cell.

The executed copies are kept under ``build/notebooks/`` (``docs/hooks/notebooks.py``), and
the docs build renders them, so the site shows each tutorial with the outputs of the
run that this test checked. The notebooks themselves are committed without outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "docs" / "hooks"))
import notebooks  # noqa: E402

pytestmark = pytest.mark.integration

PREAMBLE = "import math\nfrom pathlib import Path\nimport plotly.graph_objects as go\nimport torch\n"
PLOTLY = "application/vnd.plotly.v1+json"


def _outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _run(name: str, checks: str, *, figures: int = 1):
    """Execute ``notebooks/<name>.ipynb`` with ``checks`` as a last, hidden cell; then check
    what a reader sees: at least ``figures`` plotly figures displayed, no error output
    and nothing written to stderr (progress bars and warnings stay out of the page)."""
    nb = notebooks.execute(name, checks=PREAMBLE + checks)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, f"{name}: the notebook wrote to stderr:\n" + "\n".join(stderr)[:2000]
    shown = sum(PLOTLY in o.get("data", {}) for o in outputs)
    assert shown >= figures, f"{name}: {shown} figures displayed, expected at least {figures}"
    return nb


def test_notebooks_are_committed_without_outputs():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        assert nb["nbformat"] == 4 and nb["nbformat_minor"] >= 5, path.name  # cell ids
        for cell in nb["cells"]:
            assert cell.get("id"), path.name
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_every_notebook_has_a_test():
    tested = {name.removeprefix("test_").removesuffix("_notebook_runs") for name in globals() if name.endswith("_notebook_runs")}
    assert tested == set(notebooks.names())


def test_quickstart_notebook_runs(gemma):
    _run("quickstart", """
assert lens.table().shape[0] == 18
assert not (plain == steered).all()
assert not torch.equal(clean["logits"], steered_acts["logits"])
assert len(similarity) == 18 and len(tokens) > 10
assert latent.n_words > 20
assert set(alignment.scores) == {"fra_Latn", "zho_Hans"}
""")


@pytest.mark.slow
def test_steering_notebook_runs(gemma):
    _run("steering", """
assert vector.layers == [4, 8, 12]
assert result.shift.shape == (3, 3) and result.best["layer"] in (4, 8, 12)
assert abs(float(pure[8] @ other[8])) < 1e-3 * float(other[8].norm())
assert back.layers == [4, 8, 12]
""")


@pytest.mark.slow
def test_knowledge_notebook_runs(gemma):
    _run("knowledge", """
assert len(iks.mean) == 18 and iks.candidates == [10, 12, 14, 16] and iks.layer in iks.candidates
assert set(runs) == {"greedy", "lfd", "dola"}
assert all(s.layer in (10, 12, 14, 16) for s in runs["lfd"].steps)
assert len(qa.scores) == 6 and len(sim.mean) == 18
""")


@pytest.mark.slow
def test_store_notebook_runs(gemma):
    _run("store", """
d = model.d_model
assert set(acts.sites) == {"resid_post.6", "mlp_out.6", "resid_post.9"}
assert acts["resid_post.6"].shape == acts["blocks.9.hook_resid_post"].shape == (len(frame), d)
assert last["resid_post.9"].shape == (3, d) and stacked.shape == (18, 3, d)
assert len(similarity) == 18
assert len(chunks) >= 2
assert sum(c["rows"] for c in chunks) == STREAM_CONTEXTS * (CONTEXT - 1)
assert not torch.equal(clean["logits"], steered["logits"])
assert seen and all(len(shape) == 2 and shape[1] == d for shape in seen)
assert after < 1e-4 * float(edited["resid_post.6"].norm(dim=-1).max()) < before
assert len(kl) >= 1 and all(v > 0 for v in kl)
assert len(steered_v) == len(COEFS)
assert torch.allclose(clean_v["ln_final"], plain_v["ln_final"], rtol=1e-4, atol=1e-4)
assert not torch.equal(clean_v["logits"], steered_v[-1]["logits"])
assert store.n_rows == CACHE_TOKENS and store.n_shards >= 2 and again.n_rows == store.n_rows
assert batch.shape == (BATCH, d) and pair.shape == (2, BATCH, d)
assert torch.equal(pair[0], batch)
""", figures=0)  # the store notebook shows tables and tensors, no figure


@pytest.mark.slow
def test_lens_notebook_runs(gemma):
    _run("lens", """
assert lens.table().shape[0] == 18 and lens.targets == [" Paris"]
assert lens.target_probs.shape == (18, len(lens.rows), 1)
assert isinstance(lens.plot(), go.Figure) and isinstance(lens.plot_curves(), go.Figure)
assert len(last) == 18
assert 5 <= latent.n_words <= LATENT_WORDS and latent.p_target.shape == (latent.n_words, 18)
assert isinstance(latent.plot(), go.Figure)
sat_frame = sat.to_frame()
assert sat.n_tokens == SATURATION_TOKENS and len(sat_frame) == 18 and sat_frame.match_final.iloc[-1] == 1.0
assert tuned.layers == [6, 12]
frame = comparison.to_frame()
assert list(frame.layer) == list(range(18)) and comparison.n_tokens == TUNE_EVAL_TOKENS
untrained = frame[~frame.layer.isin([6, 12])]
# layers without a translator decode as the logit lens
assert ((untrained.kl_logit - untrained.kl_tuned).abs() <= 1e-5 * untrained.kl_logit.abs() + 1e-6).all()
assert (Path(lens_dir) / "lens.safetensors").is_file()
assert tuned_view.lens == "tuned" and tuned_view.table().shape[0] == 18
""")


@pytest.mark.slow
def test_saes_notebook_runs(gemma):
    _run("saes", """
assert store.n_rows == TRAIN_TOKENS
assert result.steps == EPOCHS * TRAIN_TOKENS // BATCH and result.sae.d_sae == LATENTS
assert len(result.to_frame()) >= 2 and isinstance(result.plot(), go.Figure)
metrics, spliced = evaluation.metrics, evaluation.spliced
assert 0 <= metrics["nmse"] < 1 and 0 < metrics["l0"] <= K and 0 <= metrics["dead_frac"] <= 1
assert math.isfinite(spliced["ce_loss_recovered"]) and spliced["ce_zero"] > spliced["ce_clean"]
for figure in ("eps_histogram", "zf_plot", "firing_histogram"):
    assert isinstance(getattr(evaluation, figure)(), go.Figure)
assert same_output and loaded.cfg == result.sae.cfg
table = sweep.table
assert sorted(table.member) == sorted(["topk-k16", "topk-k64", "topafa-centred-1_32", "topafa-authors-1_32"])
assert abs(table.set_index("member").l0["topk-k16"] - 16) <= 0.01
assert isinstance(sweep.plot(), go.Figure)
""")


@pytest.mark.slow
def test_probes_notebook_runs(gemma):
    _run("probes", """
assert set(alignment.scores) == set(LANGS) and len(alignment.layers) == 19
assert all(len(v) == 19 and all(0 <= s <= 1 for s in v) for v in alignment.scores.values())
assert len(alignment.summary()) == len(LANGS) and isinstance(alignment.plot(), go.Figure)
for p in (probe, probe_last):
    assert p.n_examples == len(PROBE_LANGS) * PER_LANGUAGE and p.n_classes == 3
    assert len(p.accuracy) == len(p.control) == 18
    assert all(0 <= v <= 1 for v in p.accuracy + p.control)
    assert isinstance(p.plot(), go.Figure)
assert max(probe.accuracy) > 0.8 > probe.chance
""")


@pytest.mark.slow
def test_consistency_notebook_runs(gemma):
    _run("consistency", """
# the embeddings (None) and every block's output: one list in block numbering
assert (res.n, res.paths, res.layers) == (N, PATHS, [None, *range(18)])
assert res.ic.shape == res.correct.shape == (N, PATHS)
assert ((0 <= res.ic) & (res.ic <= len(res.layers))).all()
assert len(res.to_frame()) == PATHS and isinstance(res.plot(), go.Figure)
assert math.isnan(res.auroc) or 0 <= res.auroc <= 1
assert 0 <= res.greedy_accuracy <= 1 and len(res.texts) == N
""")


@pytest.mark.slow
def test_report_notebook_runs(gemma):
    _run("report", """
assert list(files.results) == ["model", "logit_lens", "saturation", "mexa"]
assert all(r.status == "ok" and r.prose for r in files.results.values()), \\
    {n: r.error for n, r in files.results.items() if r.status != "ok"}
assert isinstance(files.results["saturation"].figures[0], go.Figure)
assert files.html.is_file() and files.json.name == "report.json"
assert {n: s["status"] for n, s in report["sections"].items()} == dict.fromkeys(files.results, "ok")
assert all(again.results[n].seconds == r.seconds for n, r in files.results.items())
""")
