"""SAE evaluation: every reported number against a direct computation."""

import math

import numpy as np
import pytest
import torch

import interlayer
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.evaluation import evaluate_activations, evaluate_sae
from tests.tiny_models import make_tiny, make_tokenizer


def _sae(d_in=32, d_sae=96, arch="topk", k=6, normalization="standardize", seed=0):
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=k, normalization=normalization), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=gen) * 0.1)
        sae.W_dec.mul_(torch.rand(d_sae, 1, generator=gen) + 0.5)
    return sae.eval()


def test_reconstruction_metrics_equal_direct_computation():
    torch.manual_seed(0)
    sae = _sae(d_sae=96, d_in=32)
    x = torch.randn(300, 32, dtype=torch.float32) * 2 + 1
    ev = evaluate_activations(sae, x, batch_size=64)
    with torch.no_grad():
        out = sae(x)
    err = (x - out.x_hat).double().square().sum()
    assert ev.metrics["nmse"] == pytest.approx(float(err / x.double().square().sum()), rel=1e-9)
    fvu = float(err / (x.double() - x.double().mean(0)).square().sum())
    assert ev.metrics["explained_variance"] == pytest.approx(1 - fvu, rel=1e-9)
    assert ev.metrics["l0"] == pytest.approx(float((out.f > 0).sum(-1).float().mean()))
    fired = (out.f > 0).any(0)
    assert ev.metrics["dead_frac"] == pytest.approx(float((~fired).float().mean()))
    freq = (out.f > 0).float().mean(0)
    assert ev.metrics["dense_frac"] == pytest.approx(float((freq > 0.1).float().mean()))
    np.testing.assert_allclose(ev.firing_frequency, freq.numpy(), rtol=1e-6)
    # eps_LBO of token 0 by the paper's formula (no_grad: plain tensors)
    z = out.x_in[0].double()
    with torch.no_grad():
        f_tilde = torch.cat([out.f[0].double() * sae.W_dec.double().norm(dim=-1), sae.b_dec.double().norm().reshape(1)])
    eps = abs(z.dot(z) - f_tilde.dot(f_tilde)) / ((96 - 1) * f_tilde.dot(f_tilde))
    assert ev.per_token.eps_lbo[0] == pytest.approx(float(eps), rel=1e-6)
    assert ev.metrics["eps_lbo_median"] == pytest.approx(float(np.median(ev.per_token.eps_lbo)))
    assert ev.metrics["tokens"] == 300
    ratio = out.f.norm(dim=-1) / (out.x_in - sae.b_dec).norm(dim=-1)
    assert ev.metrics["f_norm_ratio_centred_median"] == pytest.approx(float(np.median(ratio.detach().double().numpy())), rel=1e-6)
    for fig in (ev.zf_plot(), ev.eps_histogram(), ev.firing_histogram()):
        assert len(fig.data) >= 1
    assert ev.to_frame().shape[0] == 1


def test_d_in_mismatch_is_a_clear_error():
    with pytest.raises(interlayer.InterlayerError, match="d_in=32, got width 16"):
        evaluate_activations(_sae(), torch.randn(10, 16))


def _ce(logits, ids):
    """Next-token CE and log-probs at the spliced positions: every non-BOS position with a next token."""
    logp = torch.log_softmax(logits[:, 1:-1].double(), -1)
    return -logp.gather(-1, ids[:, 2:].unsqueeze(-1)).squeeze(-1), logp


def test_spliced_ce_and_kl_equal_a_direct_hooked_computation(tmp_path):
    hf = make_tiny("llama")
    model = interlayer.load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))
    sae = _sae()
    text = [" ".join(f"w{4 + (5 * j + i) % 60}" for i in range(20)) for j in range(10)]
    ev = evaluate_sae(sae, model, text, "resid_post.1", tokens=40, context_length=11, batch_size=2, progress=False)

    # Direct: the same packed contexts, the HF model, a plain forward hook on layer 1.
    contexts = [c.ids for c in interlayer.store.inputs.Tokenized(model).packed(text, 11)][:4]
    ids = torch.tensor(contexts)

    def run(replace):
        handle = None
        if replace is not None:
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                new = hidden.clone()
                new[:, 1:] = replace(hidden[:, 1:])  # every position but the BOS
                return (new, *output[1:]) if isinstance(output, tuple) else new
            handle = hf.model.layers[1].register_forward_hook(hook)
        with torch.no_grad():
            logits = hf(ids).logits
        if handle:
            handle.remove()
        return _ce(logits, ids)

    ce_clean, ref = run(None)
    ce_sae, logp_sae = run(lambda h: sae(h).x_hat)
    ce_zero, logp_zero = run(torch.zeros_like)
    kl_sae = (ref.exp() * (ref - logp_sae)).sum(-1)
    s = ev.spliced
    assert s["eval_positions"] == ids[:, 2:].numel()
    assert s["ce_clean"] == pytest.approx(float(ce_clean.mean()), rel=1e-5)
    assert s["ce_sae"] == pytest.approx(float(ce_sae.mean()), rel=1e-5)
    assert s["ce_zero"] == pytest.approx(float(ce_zero.mean()), rel=1e-5)
    assert s["kl_sae"] == pytest.approx(float(kl_sae.mean()), rel=1e-4)
    recovered = (ce_zero.mean() - ce_sae.mean()) / (ce_zero.mean() - ce_clean.mean())
    assert s["ce_loss_recovered"] == pytest.approx(float(recovered), rel=1e-4)
    assert ev.metrics["tokens"] == 4 * 10  # the SAE saw the spliced (non-BOS) positions
    assert math.isfinite(s["ce_loss_recovered"])


def test_evaluate_sae_refuses_a_site_of_another_width(tmp_path):
    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    sae = _sae(d_in=16, d_sae=32, k=4)
    with pytest.raises(interlayer.InterlayerError, match="d_in=16 but resid_post.0 of .* has width 32"):
        evaluate_sae(sae, model, ["w5 w6"], "resid_post.0", progress=False)
