"""Verification on load (interlayer.saes.verify): the numbers are evaluate_sae's, a working
SAE passes, a broken one is refused, the summary line and the ``sae check`` command."""

import json
import warnings

import pytest
import torch

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.errors import InterlayerError
from interlayer.saes import SAE
from interlayer.saes.evaluation import evaluate_sae
from interlayer.saes.loading import load
from interlayer.saes.sae import SAEConfig
from interlayer.saes.verify import SAECheck, SAEVerificationError, check_sae, verify_sae
from tests.tiny_models import tiny_checkpoint_and_text

SITE = "resid_post.1"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A saved tiny llama with its word-level tokenizer, the loaded model and a text file it tokenises."""
    root = tmp_path_factory.mktemp("verify")
    ckpt, text = tiny_checkpoint_and_text(root)
    return ckpt, text, interlayer.load_model(str(ckpt))


def exact_sae(d: int, site: str = SITE, model: str | None = None) -> SAE:
    """A ReLU 'SAE' of 2d latents that reconstructs exactly: f = [relu(x), relu(-x)], x_hat = f [I; -I]."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, arch="relu", normalization="none", apply_b_dec_to_input=False,
                        site=site, model=model))
    eye = torch.eye(d)
    state = dict(sae.state_dict())
    state.update(W_enc=torch.cat([eye, -eye], 1), W_dec=torch.cat([eye, -eye], 0), b_enc=torch.zeros(2 * d),
                 b_dec=torch.zeros(d))
    sae.load_tensors(state, "the exact SAE")
    return sae.eval()


def huge_random_sae(d: int, site: str = SITE) -> SAE:
    """Random weights at a huge scale: its reconstruction is far worse than zeros."""
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=d, d_sae=4 * d, arch="relu", normalization="none", site=site))
    state = {k: torch.randn_like(v) * 100 for k, v in sae.state_dict().items()}
    sae.load_tensors(state, "the random SAE")
    return sae.eval()


def test_an_exact_sae_passes_and_its_numbers_are_evaluate_saes(tiny, capsys):
    _, text, model = tiny
    sae = exact_sae(model.d_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no implausibility warning for a perfect reconstruction
        check = verify_sae(sae, model, data=str(text), tokens=200, context_length=16)
    line = capsys.readouterr().out.strip()
    assert line.startswith("sae check:") and line.count("\n") == 0 and "[ok]" in line
    for column in ("format=interlayer", f"site={SITE}", f"d_sae={2 * model.d_model}", "L0=", "EV=1.000", "NMSE=0.000",
                   "CE rec.=1.000", "KL="):
        assert column in line, column
    direct = evaluate_sae(sae, model, str(text), SITE, tokens=200, context_length=16, progress=False)
    expected = {**direct.metrics, **direct.spliced}
    for key in ("l0", "explained_variance", "nmse", "ce_loss_recovered", "kl_sae", "tokens"):
        assert check.metrics[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key
    assert check.passed and check.metrics["explained_variance"] == pytest.approx(1, abs=1e-5)
    assert SAECheck.from_json(json.loads(json.dumps(check.to_json()))) == check


def test_a_huge_random_sae_is_refused_naming_the_likely_cause(tiny, capsys):
    _, text, model = tiny
    with pytest.raises(SAEVerificationError, match=r"explained variance .* < 0.*wrong model, site or normalisation"):
        verify_sae(huge_random_sae(model.d_model), model, data=str(text), tokens=200, context_length=16)
    assert "[refused]" in capsys.readouterr().out
    check = check_sae(huge_random_sae(model.d_model), model, data=str(text), tokens=200, context_length=16)
    assert check.metrics["explained_variance"] < 0 and not check.passed
    assert issubclass(SAEVerificationError, InterlayerError)


def test_implausible_numbers_warn_and_quiet_prints_nothing(tiny, capsys):
    _, text, model = tiny
    sae = exact_sae(model.d_model)
    with torch.no_grad():
        sae.b_enc.fill_(-1e6)  # nothing fires: L0 = 0, the output is b_dec = 0 (EV about 0, CE rec. about 0 or 1)
    # the output is the constant b_dec = 0, worse than the mean (EV < 0): refused, quietly
    with pytest.raises(SAEVerificationError, match="explained variance"):
        verify_sae(sae, model, data=str(text), tokens=100, context_length=16, quiet=True)
    assert capsys.readouterr().out == ""
    check = check_sae(sae, model, data=str(text), tokens=100, context_length=16)
    assert check.metrics["l0"] == 0 and check.metrics["explained_variance"] < 0 and not check.passed
    assert any("L0 = 0" in w for w in check.warnings)  # the implausible number is named beside the refusal


def test_load_with_a_model_verifies(tiny, tmp_path, capsys):
    _, _, model = tiny
    folder = huge_random_sae(model.d_model).save(tmp_path / "bad")
    with pytest.raises(SAEVerificationError):
        load(folder, model, SITE, tokens=64, quiet=True)
    assert load(folder, model, SITE, verify=False).d_sae == 4 * model.d_model  # identity only


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sae_check_cli(tiny, tmp_path, capsys):
    ckpt, text, model = tiny
    good = exact_sae(model.d_model).save(tmp_path / "good")
    bad = huge_random_sae(model.d_model).save(tmp_path / "bad")
    args = ("--model", ckpt, "--data", text, "--tokens", 100, "--context-length", 16)
    code, out, err = _run(capsys, "sae", "check", "--sae", good, *args, "--out", tmp_path / "c.json")
    assert code == 0, err
    assert "sae check:" in out and "[ok]" in out
    assert SAECheck.load(tmp_path / "c.json").passed
    code, out, err = _run(capsys, "sae", "check", "--sae", bad, *args)
    assert code == 1 and "[refused]" in out
    assert err.strip().splitlines()[-1].startswith("interlayer: error:") and "explained variance" in err
    assert "Traceback" not in err
    code, _, err = _run(capsys, "sae", "check", "--sae", tmp_path / "missing", *args)
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "sae", "check", "--sae", good, *args, "--site", "resid_post.*")
    assert code == 2 and "is not one site" in err


def test_sae_check_cli_refuses_another_model_unless_allowed(tiny, tmp_path, capsys):
    ckpt, text, model = tiny
    folder = exact_sae(model.d_model, model="some-other-model").save(tmp_path / "other")
    args = ("--model", ckpt, "--data", text, "--tokens", 60, "--context-length", 16)
    code, _, err = _run(capsys, "sae", "check", "--sae", folder, *args)
    assert code == 2 and "some-other-model" in err
    code, out, err = _run(capsys, "sae", "check", "--sae", folder, *args, "--allow-model-mismatch")
    assert code == 0, err


def test_sae_eval_reads_any_format(tiny, tmp_path, capsys):
    """``sae eval --sae`` loads through interlayer.saes.load: a folder that is not an SAE names every format tried."""
    ckpt, text, model = tiny
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "sae", "eval", "--sae", empty, "--model", ckpt, "--out", tmp_path / "m.json")
    assert code == 2 and "not an interlayer SAE config" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "tried:" in err and "saelens" in err  # every format, one line



def test_the_thresholds_refuse_and_warn():
    from interlayer.saes.verify import _judge

    sae = exact_sae(8)

    def judged(**metrics):
        check = SAECheck("interlayer", SITE, 16, {"l0": 4.0, "explained_variance": 0.9, "nmse": 0.1,
                                                 "ce_loss_recovered": 0.9, "kl_sae": 0.01, **metrics})
        _judge(check, sae)
        return check

    assert judged().passed and judged().warnings == []
    assert "worse than zero-ablating" in judged(ce_loss_recovered=-0.01).refusal
    assert "worse than the activations' mean" in judged(explained_variance=-0.01).refusal
    assert any("explained variance 0.300" in w for w in judged(explained_variance=0.3).warnings)
    assert any("CE loss recovered 0.400" in w for w in judged(ce_loss_recovered=0.4).warnings)
    assert any("not sparse" in w for w in judged(l0=8.5).warnings) and not judged(l0=8.0).warnings
    assert any("L0 = 0" in w for w in judged(l0=0.0).warnings)
    with pytest.warns(UserWarning, match="explained variance 0.300"):
        import interlayer.saes.verify as verify

        check = judged(explained_variance=0.3)
        for message in check.warnings:
            warnings.warn(message)
    assert verify.LOW_EXPLAINED_VARIANCE == 0.5


def test_a_transcoder_is_checked_with_its_prediction_spliced(tiny, capsys):
    """resid_post.0 -> resid_pre.1 (the same vectors): the exact map reconstructs them, and
    spliced at resid_pre.1 from resid_post.0 it changes nothing (CE recovered 1, KL 0)."""
    _, text, model = tiny
    d = model.d_model
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, arch="relu", normalization="none", apply_b_dec_to_input=False,
                        site="resid_post.0", output_site="resid_pre.1"))
    eye = torch.eye(d)
    sae.load_tensors({**sae.state_dict(), "W_enc": torch.cat([eye, -eye], 1), "W_dec": torch.cat([eye, -eye], 0),
                      "b_enc": torch.zeros(2 * d), "b_dec": torch.zeros(d)}, "the exact transcoder")
    assert sae.cfg.transcoder
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check = verify_sae(sae.eval(), model, data=str(text), tokens=100, context_length=16)
    assert check.spliced and check.site == "resid_post.0->resid_pre.1"
    assert check.metrics["explained_variance"] == pytest.approx(1, abs=1e-5)
    assert check.metrics["nmse"] == pytest.approx(0, abs=1e-6)
    assert check.metrics["ce_loss_recovered"] == pytest.approx(1, abs=1e-4)
    assert check.metrics["kl_sae"] == pytest.approx(0, abs=1e-6)
    out = capsys.readouterr().out
    assert "resid_post.0->resid_pre.1" in out and "not spliced" not in out


def test_sae_eval_and_check_read_a_sparsify_folder(tiny, tmp_path, capsys):
    """A sparsify ``layers.1/`` folder (written by our to_sparsify) evaluates and is checked by the commands."""
    from interlayer.saes.formats.sparsify import to_sparsify

    ckpt, text, model = tiny
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=model.d_model, d_sae=4 * model.d_model, arch="topk", k=4, normalization="none",
                        site=SITE))
    folder = to_sparsify(sae, tmp_path / "run" / "layers.1")
    code, out, err = _run(capsys, "sae", "eval", "--sae", folder, "--model", ckpt, "--data", text, "--tokens", 60,
                          "--context-length", 16, "--out", tmp_path / "m.json", "--no-progress")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["l0"] == pytest.approx(4, abs=0.01)
    code, out, err = _run(capsys, "sae", "check", "--sae", tmp_path / "run", "--site", SITE, "--model", ckpt,
                          "--data", text, "--tokens", 60, "--context-length", 16)
    assert code in (0, 1) and "format=sparsify" in out and f"site={SITE}" in out and "L0=4.0" in out, err
