"""The one result protocol: every public result saves to JSON, loads back equal, and
shows an escaped HTML summary (interlayer.results)."""

import json
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.lens.fused_decoding import Generation, Step
from interlayer.lens.knowledge import IKSResult, SimHiddenResult
from interlayer.lens.latent import LatentResult
from interlayer.lens.logit_lens import LogitLensResult
from interlayer.lens.qa import QAResult
from interlayer.lens.qa_metrics import MethodScore, proportion_ci
from interlayer.lens.saturation import SaturationResult
from interlayer.lens.tuning import LensComparison
from interlayer.probes.consistency import ConsistencyResult
from interlayer.probes.linear import ProbeResult, probe_features
from interlayer.probes.mexa import MexaResult
from interlayer.results import Result
from interlayer.saes.evaluation import SAEEvaluation
from interlayer.saes.sweep import TABLE_COLUMNS, SAESweepResult
from interlayer.steering.capability import Calibration
from interlayer.steering.evaluation import SteeringSweepResult

EVIL = "<b>m&o\"del</b>"
"""A model name that must come out escaped."""

rng = np.random.default_rng(0)


def logit_lens_result():
    layers, rows, k = 3, 4, 2
    return LogitLensResult(
        model=EVIL, lens="logit", prompts=["a <b>", "c"],
        rows=pd.DataFrame({"prompt": [0, 0, 1, 1], "position": [0, 1, 0, 1], "input_token": ["<s>", "a", "<s>", "c"]}),
        layers=list(range(layers)), top_ids=torch.randint(0, 50, (layers, rows, k)),
        top_probs=torch.rand(layers, rows, k), top_tokens=[[["x<", "y"]] * rows] * layers,
        entropy=torch.rand(layers, rows), kl_to_final=torch.rand(layers, rows), targets=[" Paris"], target_ids=[7],
        target_probs=torch.rand(layers, rows, 1) * 1e-30, target_ranks=torch.randint(0, 50, (layers, rows, 1)))


def latent_result():
    n, layers = 6, 4
    return LatentResult(model=EVIL, lens="logit", task="translation", src="fr", tgt="zh", layers=list(range(layers)),
                        words=pd.DataFrame({"en": list("abcdef"), "prompt": [f"<p>{i}" for i in range(n)]}),
                        p_target=rng.random((n, layers)) * 1e-34, p_latent={"en": rng.random((n, layers))},
                        p_source=rng.random((n, layers)), entropy=rng.random((n, layers)).astype(np.float32),
                        n_missing=1, n_overlap=2, skipped=["w"])


def saturation_result():
    top1 = torch.randint(0, 5, (4, 30))
    top1[-1] = top1[-1].clone()
    return SaturationResult(model=EVIL, lens="logit", layers=[0, 1, 2, 3], top1=top1,
                            next_token=torch.randint(-1, 5, (30,)), exit_layer=torch.randint(0, 4, (30,)))


def lens_comparison():
    return LensComparison(EVIL, [0, 1, 2], [3.0, 2.0, 1.0], [1.0, 0.5, 0.2], [5.0, 4.0, 3.0], [4.0, 3.5, 3.1], 100,
                          {"kl_logit": [[2.5, 3.5], [1.5, 2.5], [0.5, 1.5]]})


def mexa_result():
    return MexaResult(EVIL, "weighted", 20, "eng_Latn", 4, {"fra_Latn": [0.1, 0.5, 0.95, 1.0], "deu_Latn": [0.0, 0.2, 0.3, 0.4]})


def probe_result():
    x = {f"resid_post.{l}": torch.from_numpy(rng.normal(size=(40, 3)) + l * np.repeat([[0], [1]], 20, 0)) for l in range(3)}
    return probe_features(x, [0] * 20 + [1] * 20, folds=4)


def consistency_result():
    return ConsistencyResult(model=EVIL, dataset="coinflip", labels=("yes", "no"), n=4, paths=2, layers=5,
                             greedy_accuracy=0.5, sc_accuracy=[0.25, 0.75], ic_accuracy=[0.25, 1.0], auroc=0.625,
                             ic=rng.random((4, 2)), correct=rng.random((4, 2)) > 0.5, agreement_correct=[0.1] * 5,
                             agreement_incorrect=[0.2] * 5, texts=[["g", "p1", "p2"]] * 4, auroc_ci=(0.3, 0.9))


def iks_result():
    return IKSResult(model=EVIL, n=3, layers=[0, 1, 2, 3], candidates=[1, 2], values=rng.random((7, 4)) * 0.6,
                     chosen=[1, 2, 1, 1, 2, 2, 1], metric="jsd", select="step", extra={"passage": True})


def sim_hidden_result():
    return SimHiddenResult(model=EVIL, layers=[0, 1, 2], values=rng.uniform(-1, 1, (5, 3)), skipped=1)


def qa_result():
    scores = [MethodScore("greedy", "closed_book", 10, 0.3, proportion_ci(3, 10), 0.5, proportion_ci(5, 10)),
              MethodScore("lfd", "closed_book", 10, 0.0, proportion_ci(0, 10), math.nan, (math.nan, math.nan))]
    return QAResult(model=EVIL, data="nq", n=10, skipped=2, noise_docs=0, decodings=["greedy", "lfd"], scores=scores,
                    examples=[{"question": "<q>?", "greedy": "a"}], settings={"seed": 0, "chat": False})


def generation():
    return Generation(prompt="The <b>", tokens=[5, 6], text=" a<b", decoding="dola",
                      steps=[Step(5, 0, {0: 0.1, 2: 0.3}), Step(6, 2, {0: 0.2, 2: 0.05})])


def sae_evaluation():
    per_token = pd.DataFrame({"norm_z": rng.random(5), "norm_f_tilde": rng.random(5), "eps_lbo": rng.random(5),
                              "l0": rng.integers(0, 9, 5)})
    return SAEEvaluation(metrics={"nmse": 0.1, "l0": 4.5, "eps_lbo_form": "centred", "tokens": 5}, per_token=per_token,
                         firing_frequency=rng.random(16), d_sae=16, label=EVIL,
                         spliced={"ce_clean": 2.0, "ce_sae": 2.5, "ce_zero": 5.0, "ce_loss_recovered": 0.83,
                                  "eval_positions": 40})


def sae_sweep(tmp_path):
    text = {"member": ["topk-k8", "relu-l1"], "arch": ["topk", "relu"], "afa_form": ["authors", "authors"],
            "mode": ["x", "x"], "eps_lbo_form": ["centred", "centred"]}
    table = pd.DataFrame({c: text.get(c, [0.5 + i, 0.25 + i]) for i, c in enumerate(TABLE_COLUMNS)})
    return SAESweepResult(table, tmp_path / "sweep", ["topk-k8"], ["relu-l1"], {})


def steering_sweep():
    shift = rng.uniform(-0.2, 0.2, (2, 3))
    return SteeringSweepResult(EVIL, "sycophancy", [3, 5], [-4.0, 1.0, 4.0], 0.4, shift, shift / 3, rng.random((2, 3)),
                               12.5, 20, 1.5, shift - 0.05, shift + 0.05)


def calibration():
    return Calibration(3, [-2.0, 1.0, 2.0], [-0.1, 0.05, 0.2], [0.95, 0.97, 0.85], 0.9, 1.0,
                       [[-0.2, 0.0], [0.0, 0.1], [0.1, 0.3]])


BUILDERS = [logit_lens_result, latent_result, saturation_result, lens_comparison, mexa_result, probe_result,
            consistency_result, iks_result, sim_hidden_result, qa_result, generation, sae_evaluation, steering_sweep,
            calibration]


def build(builder, tmp_path):
    return builder(tmp_path) if builder is sae_sweep else builder()


def assert_same(a, b):
    fa, fb = a.to_frame(), b.to_frame()
    pd.testing.assert_frame_equal(fa.reset_index(drop=True), fb.reset_index(drop=True), check_dtype=False)
    assert json.dumps(a.to_json(), sort_keys=True, default=str) == json.dumps(b.to_json(), sort_keys=True, default=str)


@pytest.mark.parametrize("builder", [*BUILDERS, sae_sweep], ids=lambda b: b.__name__)
def test_save_then_load_gives_the_same_result(builder, tmp_path):
    result = build(builder, tmp_path)
    assert isinstance(result, Result)
    path = result.save(tmp_path / "out" / "result.json")
    loaded = type(result).load(path)
    assert type(loaded) is type(result)
    assert_same(result, loaded)
    # the file is exactly what the CLI's --out writes: to_json, key-sorted
    assert json.loads(path.read_text()) == json.loads(json.dumps(result.to_json(), default=str))
    assert isinstance(loaded.plot(), go.Figure)


@pytest.mark.parametrize("builder", [*BUILDERS, sae_sweep], ids=lambda b: b.__name__)
def test_repr_html_is_a_small_escaped_table(builder, tmp_path):
    result = build(builder, tmp_path)
    page = result._repr_html_()
    assert page.startswith("<table") and page.endswith("</table>") and "plotly" not in page
    assert len(page) < 4000
    assert EVIL not in page and "<b>" not in page
    if EVIL in json.dumps(result.headline()):
        assert "&lt;b&gt;m&amp;o&quot;del&lt;/b&gt;" in page


def test_tensors_round_trip_bit_for_bit(tmp_path):
    result = logit_lens_result()
    loaded = LogitLensResult.load(result.save(tmp_path / "r.json"))
    for name in ("top_ids", "top_probs", "entropy", "kl_to_final", "target_probs", "target_ranks"):
        a, b = getattr(result, name), getattr(loaded, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert torch.equal(loaded.target_probs, result.target_probs) and float(loaded.target_probs.min()) < 1e-30


def test_probability_intervals_stay_in_the_unit_interval():
    frame = latent_result().to_frame()
    assert (frame.p_target_low >= 0).all() and (frame.p_target_high <= 1).all()
    assert (frame.p_target_low <= frame.p_target + 1e-40).all()
    assert (frame.p_latent_en_low >= 0).all() and (frame.p_latent_en_high <= 1).all()
    probe = probe_result().to_frame()
    assert (probe.ci_low >= 0).all() and (probe.ci_high <= 1).all()
    assert ((probe.ci_low <= probe.accuracy) & (probe.accuracy <= probe.ci_high)).all()
    sat = saturation_result().to_frame()
    assert ((sat.match_final_low >= 0) & (sat.match_final_high <= 1)).all()
    assert (sat.match_final_high == 1.0).iloc[-1]  # the last layer always equals itself: [x, 1]
    mexa = mexa_result().to_frame()
    assert ((mexa.score_low >= 0) & (mexa.score_high <= 1) & (mexa.score_low <= mexa.score)).all()
    cons = consistency_result().to_frame()
    assert ((cons.ic_weighted_low >= 0) & (cons.ic_weighted_high <= 1)).all()


def test_every_figure_with_an_estimate_draws_its_interval():
    for builder in (latent_result, saturation_result, lens_comparison, probe_result, consistency_result, iks_result,
                    sim_hidden_result, qa_result, calibration):
        fig = builder().plot()
        has_bars = any(getattr(t, "error_y", None) is not None and t.error_y.array is not None for t in fig.data)
        has_band = any(getattr(t, "fill", None) == "toself" for t in fig.data)
        assert has_bars or has_band, builder.__name__
    curves = logit_lens_result().plot_curves()
    assert all(t.error_y.array is not None for t in curves.data)


def test_numbering_is_named_in_outputs():
    mexa = mexa_result()
    assert mexa.layers == [None, 0, 1, 2] and mexa.hidden_index == [0, 1, 2, 3]
    frame = mexa.to_frame()
    assert list(frame.hidden_index[:4]) == [0, 1, 2, 3] and frame.layer[1:4].tolist() == [0, 1, 2]
    assert isinstance(MexaResult.from_json(mexa.to_json()).layers, list)
    gen = generation().to_frame()
    assert gen.hidden_index.tolist() == [0, 2] and gen.layer.isna().tolist() == [True, False] and gen.layer[1] == 1
    assert consistency_result().to_json()["hidden_index"] == [0, 1, 2, 3, 4]


def test_a_cli_metrics_record_loads_as_an_evaluation(tmp_path):
    record = {"nmse": 0.1, "l0": 4.5, "eps_lbo_form": "centred", "eval_tokens": 5, "ce_clean": 2.0,
              "ce_sae": 2.5, "ce_zero": 5.0, "ce_loss_recovered": 0.83, "eval_positions": 40, "sae": "dir", "site": "x"}
    (tmp_path / "metrics.json").write_text(json.dumps(record))
    loaded = SAEEvaluation.load(tmp_path / "metrics.json")
    assert loaded.metrics == {"nmse": 0.1, "l0": 4.5, "eps_lbo_form": "centred", "tokens": 5}
    assert loaded.spliced["ce_loss_recovered"] == 0.83


def test_a_sweep_directory_loads(tmp_path):
    out = tmp_path / "sweep"
    out.mkdir()
    sae_sweep(tmp_path).table.to_csv(out / "pareto.csv", index=False)
    (out / "sweep.json").write_text(json.dumps({"finished": ["topk-k8", "relu-l1"], "failed": {}}))
    loaded = SAESweepResult.load(out)
    pd.testing.assert_frame_equal(loaded.to_frame(), sae_sweep(tmp_path).table)
    with pytest.raises(InterlayerError, match="not a finished SAE sweep"):
        SAESweepResult.load(tmp_path)


def test_load_errors_are_one_line(tmp_path):
    with pytest.raises(InterlayerError, match="does not exist"):
        MexaResult.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InterlayerError, match="not a JSON file"):
        MexaResult.load(tmp_path / "bad.json")
    other = probe_result().save(tmp_path / "probe.json")
    with pytest.raises(InterlayerError, match="not a saved MexaResult.*'model'"):
        MexaResult.load(other)
    with pytest.raises(InterlayerError, match="give a .json path"):
        mexa_result().save(tmp_path / "x.csv")


def test_old_names_still_work_with_a_warning():
    import interlayer.saes.sweep as saes_sweep
    import interlayer.steering.evaluation as steering_evaluation
    from interlayer.probes.consistency import calibrate, calibrate_label_scores

    assert saes_sweep.SweepResult is SAESweepResult and steering_evaluation.SweepResult is SteeringSweepResult
    probs = torch.rand(4, 2, 3)
    with pytest.warns(DeprecationWarning, match="calibrate_label_scores"):
        assert torch.equal(calibrate(probs), calibrate_label_scores(probs))
    from interlayer.decoding import DecodeResult

    out = DecodeResult(top_ids=torch.ones(2), kl_to_final=torch.zeros(2))
    with pytest.warns(DeprecationWarning, match="top_ids"):
        assert out.topk_ids is out.top_ids
    with pytest.warns(DeprecationWarning, match="kl_to_final"):
        assert out.kl_to_reference is out.kl_to_final
