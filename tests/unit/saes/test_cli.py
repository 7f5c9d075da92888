"""``interlayer sae train / eval / convert`` on a tiny checkpoint."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interlayer.cli import dispatch as cli
from interlayer.saes import SAE, SAEEvaluation
from interlayer.saes.saelens import from_saelens
from tests.tiny_models import make_tiny, make_tokenizer

METRICS = {"nmse", "explained_variance", "l0", "dead_frac", "ce_loss_recovered", "eps_lbo_median", "tokens", "seconds"}


@pytest.fixture
def checkpoint(tmp_path):
    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(f"w{4 + (3 * j + i) % 60}" for i in range(4 + j % 11)) for j in range(300)))
    return tmp_path / "ckpt", text


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_streamed_then_eval_then_convert(capsys, tmp_path, checkpoint):
    ckpt, text = checkpoint
    out = tmp_path / "sae"
    code, stdout, err = _run(capsys, "sae", "train", "--model", ckpt, "--site", "resid_post.1", "--arch", "topk",
                             "--latents", 64, "--k", 4, "--tokens", 64 * 30, "--tokens-per-step", 64, "--data", text,
                             "--out", out, "--eval-tokens", 60, "--checkpoint-every", 10, "--context-length", 16,
                             "--no-progress")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"sae.safetensors", "cfg.json", "metrics.json", "history.csv",
                                               "figures.html"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRICS <= set(metrics) and metrics["tokens"] == 64 * 30 and metrics["l0"] == pytest.approx(4, abs=0.01)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["normalization"] == "standardize" and cfg["arch"] == "topk" and cfg["site"] == "resid_post.1"
    assert "ZF plot" in (out / "figures.html").read_text()
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--data", text, "--out", out, "--no-progress")
    assert code == 2 and "already holds a finished SAE" in err  # a finished run is never overwritten

    code, stdout, err = _run(capsys, "sae", "eval", "--sae", out, "--model", ckpt, "--data", text, "--out",
                             tmp_path / "m.json", "--tokens", 60, "--context-length", 16, "--no-progress")
    assert code == 0, err
    again = json.loads((tmp_path / "m.json").read_text())
    for key in ("nmse", "l0", "ce_loss_recovered", "eps_lbo_median"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key
    evaluation = SAEEvaluation.load(tmp_path / "m.json")  # --out holds the whole evaluation, per-token data too
    assert len(evaluation.per_token) == again["eval_tokens"] and evaluation.firing_frequency.shape == (64,)
    assert evaluation.metrics["l0"] == again["l0"] and evaluation.metrics["tokens"] == again["eval_tokens"]
    assert float(np.median(evaluation.per_token.eps_lbo)) == pytest.approx(again["eps_lbo_median"], rel=1e-6)

    code, _, err = _run(capsys, "sae", "convert", "--sae", out, "--out", tmp_path / "lens")
    assert code == 0, err
    x = torch.randn(5, 32)
    torch.testing.assert_close(from_saelens(tmp_path / "lens")(x).x_hat, SAE.load(out)(x).x_hat, atol=1e-5, rtol=1e-5)
    code, _, err = _run(capsys, "sae", "eval", "--sae", tmp_path / "lens", "--model", ckpt, "--data", text, "--out",
                        tmp_path / "m2.json", "--tokens", 60, "--context-length", 16, "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "m2.json").read_text())["nmse"] == pytest.approx(metrics["nmse"], rel=1e-4)


def test_train_from_cached_activations(capsys, tmp_path, checkpoint):
    ckpt, text = checkpoint
    code, _, err = _run(capsys, "cache", "--model", ckpt, "--data", text, "--sites", "resid_post.0", "--tokens", 3000,
                        "--out", tmp_path / "acts", "--context-length", 16, "--no-progress")
    assert code == 0, err
    args = ["sae", "train", "--model", ckpt, "--site", "resid_post.0", "--arch", "topafa", "--latents", 64,
            "--tokens", 64 * 20, "--tokens-per-step", 64, "--activations", tmp_path / "acts", "--out", tmp_path / "s",
            "--eval-tokens", 40, "--context-length", 16, "--no-progress"]
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    assert "eps_lbo_median" in stdout
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["arch"] == "topafa"
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert 0 < metrics["f_norm_ratio_median"] and metrics["tokens"] == 64 * 20
    assert (metrics["arch"], metrics["afa_form"], metrics["mode"], metrics["eps_lbo_form"]) == \
        ("topafa", "centred", "interlayer", "centred")
    # the authors-exact mode refuses a learning-rate schedule, before the model loads
    code, _, err = _run(capsys, *args[:-7], "--authors-exact", "--warmup-steps", 5, "--out", tmp_path / "e",
                        "--no-progress")
    assert code == 2 and "constant learning rate" in err and not (tmp_path / "e").exists()
    # activations cached for one model are refused for another
    other = tmp_path / "other"
    make_tiny("llama", seed=1).save_pretrained(other)
    make_tokenizer(other)
    code, _, err = _run(capsys, *args[:3], other, *args[4:17], tmp_path / "s_other", *args[18:])
    assert code == 2 and "was written for model" in err


def test_bad_input_errors(capsys, tmp_path, checkpoint):
    ckpt, text = checkpoint
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--out", tmp_path / "o", "--no-progress")
    assert code == 2 and "exactly one of --data" in err
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--data", tmp_path / "missing.txt", "--out",
                        tmp_path / "o")
    assert code == 2 and "does not exist" in err
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--data", text, "--arch", "relu", "--k", 4, "--out",
                        tmp_path / "o")
    assert code == 2 and "takes no k" in err
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--data", text, "--site", "resid_post.*", "--out",
                        tmp_path / "o")
    assert code == 2 and "is not one site" in err and "--sites" in err  # --site is one full site
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--data", text, "--site", "resid_post.9", "--out",
                        tmp_path / "o")
    assert code == 2 and "resid_post.9" in err


def test_a_sweep_with_failed_members_exits_3(capsys, tmp_path, monkeypatch):
    import pandas as pd

    from interlayer.saes import sweep

    table = pd.DataFrame([{"member": "topk_k16", "l0": 16.0, "explained_variance": 0.9, "nmse": 0.1,
                           "ce_loss_recovered": 0.8, "mse_standardized": 0.1, "pareto_ev": True}])
    result = SimpleNamespace(table=table, trained=["topk_k16"], reused=[], failed={"relu_0.01": "loss became NaN"},
                             out=tmp_path)
    monkeypatch.setattr(sweep, "run_sweep", lambda cfg: result)
    code, stdout, _ = _run(capsys, "sae", "sweep", "--activations", tmp_path, "-o", tmp_path / "s", "--json")
    assert code == 3 and json.loads(stdout)["failed"] == {"relu_0.01": "loss became NaN"}


def test_train_jumprelu_records_the_threshold_it_trained_with(capsys, tmp_path, checkpoint):
    ckpt, text = checkpoint
    out = tmp_path / "jump"
    code, _, err = _run(capsys, "sae", "train", "--model", ckpt, "--site", "resid_post.1", "--arch", "jumprelu",
                        "--jumprelu-threshold", 0.01, "--latents", 32, "--tokens", 64 * 2, "--tokens-per-step", 64,
                        "--data", text, "--out", out, "--eval-tokens", 30, "--context-length", 16, "--no-progress")
    assert code == 0, err
    assert json.loads((out / "cfg.json").read_text())["jumprelu_init_threshold"] == 0.01
    assert json.loads((out / "metrics.json").read_text())["train_options"]["jumprelu_threshold"] == 0.01
