"""``interlayer sae sweep``: grids, the table and figure, reuse and resume, bad input;
and training several SAEs on one pass equals training each alone."""

import json
import math

import pandas as pd
import pytest
import torch

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.evaluation import evaluate_sae, evaluate_saes
from interlayer.saes.sources import TensorSource
from interlayer.saes.sweep import DEFAULT_GRID, TABLE_COLUMNS, matched_l0, parse_grid, pareto_table
from interlayer.saes.training import TrainMember, TrainOptions, train_sae, train_saes
from tests.tiny_models import make_tiny, make_tokenizer


def test_grid_parsing_and_ranges():
    members = parse_grid("topk=2,4;topafa=authors:1/32,1/64,exact:0.5", ["topk", "topafa"], 64)
    assert [m.name for m in members] == ["topk-k2", "topk-k4", "topafa-authors-1_32", "topafa-centred-1_64",
                                         "topafa-exact-0.5"]
    assert members[2].value == pytest.approx(1 / 32) and members[3].afa_form == "centred" and members[4].exact
    assert len(parse_grid(None, ["topk", "batchtopk", "jumprelu", "relu", "topafa"], 5120)) == 12
    assert "topk=16,32,64,128" in DEFAULT_GRID
    for grid, archs, message in [
        ("topk=0", ["topk"], "k=0 for topk is out of range"),
        ("topk=65", ["topk"], "k=65 for topk is out of range: k must be a whole number from 1 to the number of latents (64)"),
        ("batchtopk=2.5", ["batchtopk"], "k=2.5 for batchtopk is out of range"),
        ("topafa=centred:-0.1", ["topafa"], "-0.1 for topafa is out of range: λ"),
        ("relu=-1", ["relu"], "the L1 coefficient must be a finite number >= 0"),
        ("jumprelu=abc", ["jumprelu"], "'abc' for jumprelu is not a number"),
        ("topafa=middle:1", ["topafa"], "unknown top-AFA form 'middle'"),
        ("topk=4", ["relu"], "--grid names 'topk', which --arch"),
        ("gatedx=4", ["topk"], "unknown architecture 'gatedx' in --grid"),
        ("topk=4,4", ["topk"], "lists 'topk-k4' more than once"),
    ]:
        with pytest.raises(interlayer.InterlayerError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse_grid(grid, archs, 64)
    with pytest.raises(interlayer.InterlayerError, match="unknown architecture.*'gatedx'.*valid choices"):
        parse_grid(None, ["gatedx"], 64)


def test_training_together_equals_training_alone(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64 * 8, 16, generator=g) + 2
    options = TrainOptions(tokens=64 * 10, batch_size=64, lr=3e-3, warmup_steps=2, dead_after=2, aux_k=4,
                           checkpoint_every=3, progress=False)
    cfgs = [SAEConfig(d_in=16, d_sae=32, arch="topk", k=4), SAEConfig(d_in=16, d_sae=32, arch="topafa"),
            SAEConfig(d_in=16, d_sae=32, arch="jumprelu")]
    alone = [train_sae(TensorSource(x, 64), c, options).sae for c in cfgs]

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 7:
            raise Stop

    members = [TrainMember(c, options, tmp_path / str(i)) for i, c in enumerate(cfgs)]
    with pytest.raises(Stop):  # interrupted: every member has its step-6 checkpoint
        train_saes(TensorSource(x, 64), members, on_step=stop_at)
    results = train_saes(TensorSource(x, 64), members)
    for one, res in zip(alone, results):
        assert res.resumed_from == 6
        for name, value in one.state_dict().items():
            torch.testing.assert_close(res.sae.state_dict()[name], value, msg=name)


def test_evaluate_saes_equals_evaluate_sae(tmp_path):
    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    saes = [SAE(SAEConfig(d_in=32, d_sae=64, arch="topk", k=k, site="resid_post.0"), seed=k).eval() for k in (2, 8)]
    text = [" ".join(f"w{4 + (5 * j + i) % 60}" for i in range(20)) for j in range(10)]
    together = evaluate_saes(saes, model, text, tokens=60, context_length=11, batch_size=3, rows_per_step=7,
                             progress=False)
    for sae, ev in zip(saes, together):
        alone = evaluate_sae(sae, model, text, tokens=60, context_length=11, batch_size=2, progress=False)
        for key, value in {**alone.metrics, **alone.spliced}.items():
            got = {**ev.metrics, **ev.spliced}[key]
            assert got == (pytest.approx(value, rel=1e-5, abs=1e-9) if isinstance(value, float) else value), key
    assert together[0].spliced["ce_sae"] != pytest.approx(together[1].spliced["ce_sae"], rel=1e-4)


def test_pareto_table_marks_the_frontier():
    rows = [{"member": "a", "arch": "topk", "l0": 8, "explained_variance": 0.7},
            {"member": "b", "arch": "topk", "l0": 16, "explained_variance": 0.6},  # beaten by a
            {"member": "c", "arch": "relu", "l0": 32, "explained_variance": 0.9}]
    table = pareto_table(rows)
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert dict(zip(table.member, table.pareto_ev)) == {"a": True, "b": False, "c": True}


def test_matched_l0_interpolates_in_log_l0_without_extrapolating():
    rows = [{"member": "k16", "arch": "topk", "l0": 16, "explained_variance": 0.80, "nmse": 0.020},
            {"member": "k64", "arch": "topk", "l0": 64, "explained_variance": 0.90, "nmse": 0.010},
            {"member": "b", "arch": "batchtopk", "l0": 32, "explained_variance": 0.86, "nmse": 0.012},
            {"member": "c", "arch": "topafa", "afa_form": "centred", "mode": "interlayer", "l0": 400,
             "explained_variance": 0.95, "nmse": 0.004}]
    table = pareto_table(rows)
    ev = matched_l0(table)
    assert list(ev.index) == [16, 32, 64, 400]
    # log2: 16 -> 4, 32 -> 5, 64 -> 6; TopK at L0 32 lies halfway between its two members
    assert ev.loc[32, "topk"] == pytest.approx(0.85, abs=1e-12)
    assert ev.loc[32, "batchtopk"] == 0.86 and ev.loc[32, "best"] == "batchtopk"
    assert ev.loc[16, "topk"] == 0.80 and pd.isna(ev.loc[16, "batchtopk"]) and pd.isna(ev.loc[16, "best"])
    assert pd.isna(ev.loc[400, "topk"]) and ev.loc[400, "topafa (centred)"] == 0.95 and pd.isna(ev.loc[400, "best"])
    # at L0 24 (log2 4.585): TopK 0.80 + 0.10 * 0.585 / 2
    at24 = matched_l0(table, l0s=[24])
    assert at24.loc[24, "topk"] == pytest.approx(0.80 + 0.10 * (math.log2(24) - 4) / 2, abs=1e-12)
    # NMSE: lower is better, so TopK's interpolated 0.015 loses to BatchTopK's 0.012 ... and wins when higher
    nmse = matched_l0(table, "nmse")
    assert nmse.loc[32, "topk"] == pytest.approx(0.015) and nmse.loc[32, "best"] == "batchtopk"
    table.loc[table.member == "b", "nmse"] = 0.02
    assert matched_l0(table, "nmse").loc[32, "best"] == "topk"
    with pytest.raises(interlayer.InterlayerError, match="no column 'evv'.*explained_variance"):
        matched_l0(table, "evv")


@pytest.fixture
def cache(tmp_path, capsys):
    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(f"w{4 + (3 * j + i) % 60}" for i in range(4 + j % 11)) for j in range(300)))
    code = cli.main([str(a) for a in ("cache", "--model", tmp_path / "ckpt", "--data", text, "--sites", "resid_post.0",
                                      "--tokens", 3000, "--out", tmp_path / "acts", "--context-length", 16,
                                      "--no-progress")])
    assert code == 0, capsys.readouterr().err
    return tmp_path / "ckpt", text, tmp_path / "acts"


def _sweep(capsys, ckpt, text, acts, out, *extra):
    argv = ["sae", "sweep", "--model", ckpt, "--activations", acts, "--out", out, "--latents", 48, "--tokens", 64 * 12,
            "--tokens-per-step", 64, "--eval-data", text, "--eval-tokens", 45, "--context-length", 16, "--checkpoint-every", 4,
            "--no-progress", *extra]
    code = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sweep_of_two_by_two_writes_the_table_and_figure(tmp_path, capsys, cache):
    ckpt, text, acts = cache
    out = tmp_path / "sweep"
    code, stdout, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk,topafa", "--grid",
                               "topk=2,6;topafa=authors:1/32,centred:1/32")
    assert code == 0, err
    names = ["topk-k2", "topk-k6", "topafa-authors-1_32", "topafa-centred-1_32"]
    assert "trained 4, reused 0, failed 0" in stdout
    table = pd.read_csv(out / "pareto.csv")
    assert list(table.columns) == list(TABLE_COLUMNS) and sorted(table.member) == sorted(names)
    for name in names:
        member = out / name
        assert {p.name for p in member.iterdir()} == {"sae.safetensors", "cfg.json", "metrics.json", "history.csv",
                                                      "figures.html"}
        metrics = json.loads((member / "metrics.json").read_text())
        row = table[table.member == name].iloc[0]
        assert row.l0 == pytest.approx(metrics["l0"]) and row.ce_loss_recovered == pytest.approx(metrics["ce_loss_recovered"])
        assert metrics["arch"] == row.arch and metrics["mode"] == "interlayer"
        if metrics["arch"] == "topafa":
            assert metrics["afa_form"] == name.split("-")[1] and metrics["coefficient"] == pytest.approx(1 / 32)
            assert metrics["eps_lbo_form"] == metrics["afa_form"]
        else:
            assert metrics["afa_form"] is None and metrics["k"] == int(name.split("k")[-1])
    # the metrics are those of the saved SAE, evaluated alone
    model = interlayer.load_model(str(ckpt))
    alone = evaluate_sae(SAE.load(out / "topk-k6"), model, str(text), tokens=45, context_length=16, progress=False)
    saved = json.loads((out / "topk-k6" / "metrics.json").read_text())
    assert saved["nmse"] == pytest.approx(alone.metrics["nmse"], rel=1e-5)
    assert saved["kl_sae"] == pytest.approx(alone.spliced["kl_sae"], rel=1e-4)
    assert table[table.member == "topk-k6"].l0.iloc[0] == pytest.approx(6, abs=0.01)
    page = (out / "pareto.html").read_text()
    assert page.count("<script") <= 3 and "topafa (centred)" in page and "explained variance" in page
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["finished"] == names and sweep["columns"] == list(TABLE_COLUMNS)

    # Run again with one more member: the four are reused (files untouched), one is trained.
    stamps = {n: (out / n / "sae.safetensors").stat().st_mtime_ns for n in names}
    code, stdout, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk,topafa", "--grid",
                               "topk=2,6,4;topafa=authors:1/32,centred:1/32")
    assert code == 0, err
    assert "trained 1, reused 4" in stdout
    assert stamps == {n: (out / n / "sae.safetensors").stat().st_mtime_ns for n in names}
    assert len(pd.read_csv(out / "pareto.csv")) == 5

    # A finished member of another config in the grid's place: an error before any training, files kept.
    code, _, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk", "--grid", "topk=2", "--lr", "0.001")
    assert code == 2 and "topk-k2 holds a finished SAE of another config" in err and "options.lr" in err
    assert (out / "topk-k2" / "metrics.json").is_file()


def test_sweep_resumes_an_interrupted_member(tmp_path, capsys, cache, monkeypatch):
    ckpt, text, acts = cache
    out = tmp_path / "sweep"
    from interlayer.saes import evaluation

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_saes", broken)
    code, _, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk", "--grid", "topk=3")
    assert code == 130 and "interrupted" in err  # trained, interrupted before the evaluation
    assert (out / "topk-k3" / "checkpoint.safetensors").is_file() and not (out / "topk-k3" / "metrics.json").exists()
    monkeypatch.undo()
    code, stdout, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk", "--grid", "topk=3")
    assert code == 0, err
    assert not (out / "topk-k3" / "checkpoint.safetensors").exists()
    history = pd.read_csv(out / "topk-k3" / "history.csv")
    assert history.step.iloc[-1] == 12


def test_sweep_bad_input_before_any_work(tmp_path, capsys, cache):
    ckpt, text, acts = cache
    out = tmp_path / "sweep"
    code, _, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk", "--grid", "topk=49")
    assert code == 2 and "k=49 for topk is out of range" in err and not out.exists()
    code, _, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk,gatedx")
    assert code == 2 and "unknown architecture(s) 'gatedx'" in err
    code, _, err = _sweep(capsys, ckpt, text, tmp_path, out, "--arch", "topk")
    assert code == 2 and "not an activation cache" in err
    (out / "topk-k16").mkdir(parents=True)
    (out / "topk-k16" / "notes.txt").write_text("mine")
    code, _, err = _sweep(capsys, ckpt, text, acts, out, "--arch", "topk", "--grid", "topk=16")
    assert code == 2 and "holds files that are not a sweep member's" in err
    assert (out / "topk-k16" / "notes.txt").read_text() == "mine"
