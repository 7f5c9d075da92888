"""Every notebook's code runs top to bottom on the embedded model, and each was
committed without outputs."""

import json
import math
from pathlib import Path

import plotly.graph_objects as go
import pytest
import torch

pytestmark = pytest.mark.integration

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def _run_notebook(name: str) -> dict:
    """Exec every code cell of ``notebooks/<name>`` in one namespace, top to bottom."""
    path = NOTEBOOK.parent / name
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in cells)
    namespace: dict = {}
    for cell in cells:
        exec(compile("".join(cell["source"]), path.name, "exec"), namespace)
    return namespace


def test_quickstart_notebook_runs(gemma):
    namespace = _run_notebook("quickstart.ipynb")
    assert namespace["lens"].table().shape[0] == 18
    assert not (namespace["plain"] == namespace["steered"]).all()
    assert not torch.equal(namespace["clean"]["logits"], namespace["steered_acts"]["logits"])
    assert len(namespace["similarity"]) == 18 and len(namespace["tokens"]) > 10
    assert namespace["latent"].n_words > 20
    assert set(namespace["alignment"].scores) == {"fra_Latn", "zho_Hans"}


@pytest.mark.slow
def test_steering_notebook_runs(gemma):
    namespace = _run_notebook("steering.ipynb")
    assert namespace["vector"].layers == [4, 8, 12]
    assert namespace["result"].shift.shape == (3, 3) and namespace["result"].best["layer"] in (4, 8, 12)
    assert abs(float(namespace["pure"][8] @ namespace["other"][8])) < 1e-3 * float(namespace["other"][8].norm())
    assert namespace["back"].layers == [4, 8, 12]


@pytest.mark.slow
def test_knowledge_notebook_runs(gemma):
    namespace = _run_notebook("knowledge.ipynb")
    iks = namespace["iks"]
    assert len(iks.mean) == 18 and iks.candidates == [10, 12, 14, 16] and iks.layer in iks.candidates
    assert set(namespace["runs"]) == {"greedy", "lfd", "dola"}
    assert all(s.layer in (10, 12, 14, 16) for s in namespace["runs"]["lfd"].steps)
    assert len(namespace["qa"].scores) == 6 and len(namespace["sim"].mean) == 18


@pytest.mark.slow
def test_store_notebook_runs(gemma):
    ns = _run_notebook("store.ipynb")
    acts, d = ns["acts"], gemma.d_model
    assert set(acts.sites) == {"resid_post.6", "mlp_out.6", "resid_post.9"}
    assert acts["resid_post.6"].shape == acts["blocks.9.hook_resid_post"].shape == (len(ns["frame"]), d)
    assert ns["last"]["resid_post.9"].shape == (3, d) and ns["stacked"].shape == (18, 3, d)
    assert len(ns["similarity"]) == 18
    assert len(ns["chunks"]) >= 2
    assert sum(c["rows"] for c in ns["chunks"]) == ns["STREAM_CONTEXTS"] * (ns["CONTEXT"] - 1)
    assert not torch.equal(ns["clean"]["logits"], ns["steered"]["logits"])
    assert ns["seen"] and all(len(shape) == 2 and shape[1] == d for shape in ns["seen"])
    assert ns["after"] < 1e-4 * float(ns["edited"]["resid_post.6"].norm(dim=-1).max()) < ns["before"]
    assert len(ns["kl"]) >= 1 and all(v > 0 for v in ns["kl"])
    assert len(ns["steered_v"]) == len(ns["COEFS"])
    assert torch.allclose(ns["clean_v"]["ln_final"], ns["plain_v"]["ln_final"], rtol=1e-4, atol=1e-4)
    assert not torch.equal(ns["clean_v"]["logits"], ns["steered_v"][-1]["logits"])
    store = ns["store"]
    assert store.n_rows == ns["CACHE_TOKENS"] and store.n_shards >= 2 and ns["again"].n_rows == store.n_rows
    assert ns["batch"].shape == (ns["BATCH"], d) and ns["pair"].shape == (2, ns["BATCH"], d)
    assert torch.equal(ns["pair"][0], ns["batch"])


@pytest.mark.slow
def test_lens_notebook_runs(gemma):
    ns = _run_notebook("lens.ipynb")
    lens = ns["lens"]
    assert lens.table().shape[0] == 18 and lens.targets == [" Paris"]
    assert lens.target_probs.shape == (18, len(lens.rows), 1)
    assert isinstance(lens.plot(), go.Figure) and isinstance(lens.plot_curves(), go.Figure)
    assert len(ns["last"]) == 18
    latent = ns["latent"]
    assert 5 <= latent.n_words <= ns["LATENT_WORDS"] and latent.p_target.shape == (latent.n_words, 18)
    assert isinstance(latent.plot(), go.Figure)
    sat = ns["sat"].to_frame()
    assert ns["sat"].n_tokens == ns["SATURATION_TOKENS"] and len(sat) == 18 and sat.match_final.iloc[-1] == 1.0
    assert ns["tuned"].layers == [6, 12]
    comparison = ns["comparison"].to_frame()
    assert list(comparison.layer) == list(range(18)) and ns["comparison"].n_tokens == ns["TUNE_EVAL_TOKENS"]
    untrained = comparison[~comparison.layer.isin([6, 12])]
    # layers without a translator decode as the logit lens
    assert ((untrained.kl_logit - untrained.kl_tuned).abs() <= 1e-5 * untrained.kl_logit.abs() + 1e-6).all()
    assert (Path(ns["lens_dir"]) / "lens.safetensors").is_file()
    assert ns["tuned_view"].lens == "tuned" and ns["tuned_view"].table().shape[0] == 18


@pytest.mark.slow
def test_saes_notebook_runs(gemma):
    ns = _run_notebook("saes.ipynb")
    assert ns["store"].n_rows == ns["TRAIN_TOKENS"]
    result = ns["result"]
    assert result.steps == ns["EPOCHS"] * ns["TRAIN_TOKENS"] // ns["BATCH"] and result.sae.d_sae == ns["LATENTS"]
    assert len(result.to_frame()) >= 2 and isinstance(result.plot(), go.Figure)
    metrics, spliced = ns["evaluation"].metrics, ns["evaluation"].spliced
    assert 0 <= metrics["nmse"] < 1 and 0 < metrics["l0"] <= ns["K"] and 0 <= metrics["dead_frac"] <= 1
    assert math.isfinite(spliced["ce_loss_recovered"]) and spliced["ce_zero"] > spliced["ce_clean"]
    for figure in ("eps_histogram", "zf_plot", "firing_histogram"):
        assert isinstance(getattr(ns["evaluation"], figure)(), go.Figure)
    assert ns["same_output"] and ns["loaded"].cfg == result.sae.cfg
    table = ns["sweep"].table
    assert sorted(table.member) == sorted(["topk-k16", "topk-k64", "topafa-centred-1_32", "topafa-authors-1_32"])
    assert table.set_index("member").l0["topk-k16"] == pytest.approx(16, abs=0.01)
    assert isinstance(ns["sweep"].plot(), go.Figure)


@pytest.mark.slow
def test_probes_notebook_runs(gemma):
    ns = _run_notebook("probes.ipynb")
    alignment = ns["alignment"]
    assert set(alignment.scores) == set(ns["LANGS"]) and len(alignment.layers) == 19
    assert all(len(v) == 19 and all(0 <= s <= 1 for s in v) for v in alignment.scores.values())
    assert len(alignment.summary()) == len(ns["LANGS"]) and isinstance(alignment.plot(), go.Figure)
    for probe in (ns["probe"], ns["probe_last"]):
        assert probe.n_examples == len(ns["PROBE_LANGS"]) * ns["PER_LANGUAGE"] and probe.n_classes == 3
        assert len(probe.accuracy) == len(probe.control) == 18
        assert all(0 <= v <= 1 for v in probe.accuracy + probe.control)
        assert isinstance(probe.plot(), go.Figure)
    assert max(ns["probe"].accuracy) > 0.8 > ns["probe"].chance


@pytest.mark.slow
def test_consistency_notebook_runs(gemma):
    ns = _run_notebook("consistency.ipynb")
    res = ns["res"]
    # the embeddings (None) and every block's output: one list in block numbering
    assert (res.n, res.paths, res.layers) == (ns["N"], ns["PATHS"], [None, *range(18)])
    assert res.ic.shape == res.correct.shape == (ns["N"], ns["PATHS"])
    assert ((0 <= res.ic) & (res.ic <= len(res.layers))).all()
    assert len(res.to_frame()) == ns["PATHS"] and isinstance(res.plot(), go.Figure)
    assert math.isnan(res.auroc) or 0 <= res.auroc <= 1
    assert 0 <= res.greedy_accuracy <= 1 and len(res.texts) == ns["N"]


@pytest.mark.slow
def test_report_notebook_runs(gemma):
    ns = _run_notebook("report.ipynb")
    files = ns["files"]
    assert list(files.results) == ["model", "logit_lens", "saturation", "mexa"]
    assert all(r.status == "ok" and r.prose for r in files.results.values()), \
        {n: r.error for n, r in files.results.items() if r.status != "ok"}
    assert isinstance(files.results["saturation"].figures[0], go.Figure)
    assert files.html.is_file() and files.json.name == "report.json"
    assert {n: s["status"] for n, s in ns["report"]["sections"].items()} == dict.fromkeys(files.results, "ok")
    assert all(ns["again"].results[n].seconds == r.seconds for n, r in files.results.items())
