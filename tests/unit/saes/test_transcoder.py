"""Transcoders (input site != output site) on the one evaluation path: spliced CE/KL and
reconstruction numbers against a direct computation with plain Hugging Face hooks."""

import pytest
import torch

import interlayer
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.evaluation import evaluate_sae
from interlayer.saes.verify import SAEVerificationError, check_sae, verify_sae
from tests.tiny_models import make_tiny, make_tokenizer

TEXT = [" ".join(f"w{4 + (5 * j + i) % 60}" for i in range(20)) for j in range(10)]


def _transcoder(d=32, h=96, k=6, skip=None, seed=0):
    cfg = SAEConfig(d_in=d, d_sae=h, arch="topk", k=k, normalization="none", site="mlp_in.1",
                    output_site="mlp_out.1", apply_b_dec_to_input=False, skip=skip)
    sae = SAE(cfg, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d, generator=gen) * 0.01)
        sae.W_dec.mul_(0.05)
    return sae.eval()


def _ce(logits, ids):
    """Next-token CE and log-probs at the spliced positions (non-BOS, with a next token)."""
    logp = torch.log_softmax(logits[:, 1:-1].double(), -1)
    return -logp.gather(-1, ids[:, 2:].unsqueeze(-1)).squeeze(-1), logp


def _direct(hf, ids, predict):
    """Logits with layer 1's MLP output replaced (at every non-BOS position) by
    ``predict(mlp_input)``, the MLP input read after the pre-MLP norm in the same pass;
    ``predict=None``: the clean pass. Also the clean MLP input and output rows."""
    layer = hf.model.layers[1]
    seen = {}

    def read_in(module, args, output):
        seen["in"] = output.detach()

    def replace(module, args, output):
        seen["out"] = output.detach()
        if predict is None:
            return output
        new = output.clone()
        new[:, 1:] = predict(seen["in"][:, 1:]).to(output.dtype)
        return new

    handles = [layer.post_attention_layernorm.register_forward_hook(read_in), layer.mlp.register_forward_hook(replace)]
    try:
        with torch.no_grad():
            logits = hf(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, seen["in"], seen["out"]


@pytest.fixture()
def tiny(tmp_path):
    hf = make_tiny("llama")
    model = interlayer.load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))
    ids = torch.tensor([c.ids for c in interlayer.store.inputs.Tokenized(model).packed(TEXT, 11)][:4])
    return hf, model, ids


def test_spliced_transcoder_equals_a_direct_hooked_computation(tiny):
    hf, model, ids = tiny
    sae = _transcoder()
    ev = evaluate_sae(sae, model, TEXT, tokens=40, context_length=11, batch_size=2, progress=False)

    clean, x_in, y = _direct(hf, ids, None)
    spliced, _, _ = _direct(hf, ids, sae.reconstruct)
    zero, _, _ = _direct(hf, ids, lambda x: torch.zeros_like(x))
    ce_clean, ref = _ce(clean, ids)
    ce_sae, logp_sae = _ce(spliced, ids)
    ce_zero, logp_zero = _ce(zero, ids)
    s = ev.spliced
    assert s["ce_clean"] == pytest.approx(float(ce_clean.mean()), rel=1e-5)
    assert s["ce_sae"] == pytest.approx(float(ce_sae.mean()), rel=1e-5)
    assert s["ce_zero"] == pytest.approx(float(ce_zero.mean()), rel=1e-5)
    assert s["kl_sae"] == pytest.approx(float((ref.exp() * (ref - logp_sae)).sum(-1).mean()), rel=1e-4)
    assert s["kl_zero"] == pytest.approx(float((ref.exp() * (ref - logp_zero)).sum(-1).mean()), rel=1e-4)
    assert s["ce_sae"] != pytest.approx(s["ce_clean"], rel=1e-3)  # the splice changed the pass

    # reconstruction numbers: the prediction against the output site's clean rows (non-BOS)
    x, target = x_in[:, 1:].reshape(-1, 32).double(), y[:, 1:].reshape(-1, 32).double()
    with torch.no_grad():
        pred = sae(x.float()).x_hat.double()
    err = (pred - target).square().sum()
    assert ev.metrics["tokens"] == target.shape[0]
    assert ev.metrics["nmse"] == pytest.approx(float(err / target.square().sum()), rel=1e-5)
    fvu = err / (target - target.mean(0)).square().sum()
    assert ev.metrics["explained_variance"] == pytest.approx(float(1 - fvu), rel=1e-5, abs=1e-6)


def test_a_zero_transcoder_recovers_nothing_and_is_refused(tiny):
    _, model, _ = tiny
    sae = _transcoder()
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
    ev = evaluate_sae(sae, model, TEXT, tokens=40, context_length=11, batch_size=2, progress=False)
    assert ev.spliced["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-9)
    assert ev.spliced["kl_sae"] == pytest.approx(ev.spliced["kl_zero"], rel=1e-9)
    with pytest.raises(SAEVerificationError, match=r"mlp_in\.1->mlp_out\.1.*worse than the activations' mean"):
        verify_sae(sae, model, data=TEXT, tokens=40, context_length=11, quiet=True)


def test_check_of_a_fitted_affine_transcoder_is_spliced(tiny):
    """An affine skip fitted by least squares to the MLP on the check's own rows explains
    variance (EV >= 0 by construction); the check reports its spliced CE/KL."""
    hf, model, ids = tiny
    sae = _transcoder(skip="affine")
    _, x_in, y = _direct(hf, ids, None)
    x, target = x_in[:, 1:].reshape(-1, 32).double(), y[:, 1:].reshape(-1, 32).double()
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    solution = torch.linalg.lstsq(design, target).solution
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.zero_()
        sae.W_skip.copy_(solution[:-1].float())
        sae.b_skip.copy_(solution[-1].float())
    check = check_sae(sae, model, data=TEXT, tokens=40, context_length=11)
    ev = evaluate_sae(sae, model, TEXT, tokens=40, context_length=11, progress=False)
    assert check.site == "mlp_in.1->mlp_out.1" and check.spliced
    assert check.metrics["explained_variance"] > 0
    for key in ("ce_loss_recovered", "kl_sae"):
        assert check.metrics[key] == pytest.approx(ev.spliced[key], rel=1e-9)
    assert "n/a" not in check.summary().split("CE")[1]
