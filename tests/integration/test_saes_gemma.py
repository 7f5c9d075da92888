"""Integration: SAEs on the real Gemma 3 270M (d = 640)."""

import json

import pytest
import torch

from interlayer.cli import dispatch as cli
from interlayer.model.loading import SAMPLE_TEXT
from interlayer.saes import SAE, SAEConfig, topafa
from interlayer.saes.evaluation import evaluate_sae
from interlayer import collect

pytestmark = pytest.mark.integration


def test_fast_topafa_selection_equals_full_sort_on_gemma_activations(gemma):
    acts = collect(gemma, str(SAMPLE_TEXT), "resid_post.8", context_length=128, limit=6, progress=False)
    x = acts["resid_post.8"]
    assert x.shape[0] > 700 and x.shape[1] == 640
    for normalization in ("standardize", "none"):
        sae = SAE(SAEConfig(d_in=640, d_sae=16 * 640, arch="topafa", normalization=normalization)).eval()
        with torch.no_grad():
            sae.b_dec.copy_(x.mean(0) if normalization == "none" else 0.0)
            out = sae(x)
            scores = (torch.relu(out.pre) * sae.W_dec.norm(dim=-1)).square()
            target = (out.x_in - sae.b_dec).norm(dim=-1)
            ref = topafa.select_sorted(scores, target)
            for first in (16, 128, 4096):
                fast = topafa.select(scores, target, first)
                assert torch.equal(fast.k, ref.k)
                assert torch.equal(scores * fast.keep, scores * ref.keep)
        assert 1 <= ref.k.min() and ref.k.max() < 16 * 640


def test_spliced_ce_on_gemma_equals_a_direct_hooked_computation(gemma):
    torch.manual_seed(0)
    acts = collect(gemma, str(SAMPLE_TEXT), "resid_post.5", context_length=64, limit=8, progress=False)["resid_post.5"]
    sae = SAE(SAEConfig(d_in=640, d_sae=1280, arch="topk", k=64, normalization="standardize")).eval()
    with torch.no_grad():
        sae.b_dec.copy_(((acts - acts.mean(-1, keepdim=True)) / acts.std(-1, keepdim=True)).mean(0))
    ev = evaluate_sae(sae, gemma, str(SAMPLE_TEXT), "resid_post.5", tokens=126, context_length=64, progress=False)
    from interlayer.store.inputs import Tokenized

    ids = torch.tensor([c.ids for c in Tokenized(gemma).packed(str(SAMPLE_TEXT), 64)][:2])

    def ce(replace):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            new = hidden.clone()
            new[:, 1:] = replace(hidden[:, 1:])
            return (new, *output[1:]) if isinstance(output, tuple) else new
        handle = gemma.model.model.layers[5].register_forward_hook(hook) if replace else None
        with torch.no_grad():
            logits = gemma.model(ids).logits
        if handle:
            handle.remove()
        # every spliced (non-BOS) position that has a next token
        logp = torch.log_softmax(logits[:, 1:-1].double(), -1)
        return float(-logp.gather(-1, ids[:, 2:].unsqueeze(-1)).mean())

    clean, spliced, zero = ce(None), ce(lambda h: sae(h).x_hat), ce(torch.zeros_like)
    assert ev.spliced["ce_clean"] == pytest.approx(clean, rel=1e-4)
    assert ev.spliced["ce_sae"] == pytest.approx(spliced, rel=1e-4)
    assert ev.spliced["ce_zero"] == pytest.approx(zero, rel=1e-4)
    assert zero > clean  # zero-ablating a middle residual stream hurts


@pytest.mark.slow
def test_sae_train_cli_streams_gemma_and_writes_the_outputs(tmp_path, capsys, gemma):
    out = tmp_path / "sae"
    code = cli.main(["sae", "train", "--model", "gemma-3-270m", "--site", "resid_post.6", "--arch", "topafa",
                     "--latents", "1280", "--tokens", "4096", "--tokens-per-step", "256", "--data", str(SAMPLE_TEXT),
                     "--out", str(out), "--eval-tokens", "256", "--checkpoint-every", "8", "--no-progress",
                     "--device", "cpu", "--memory-mb", "8"])  # streamed in small chunks: no more text than needed
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("nmse", "explained_variance", "l0", "dead_frac", "ce_loss_recovered", "eps_lbo_median", "tokens",
                "seconds"):
        assert key in metrics and metrics[key] == metrics[key], key  # present and not NaN
    assert metrics["tokens"] == 4096 and metrics["nmse"] < 1.0 and metrics["l0"] >= 1
    sae = SAE.load(out)
    assert sae.cfg.d_in == 640 and sae.cfg.site == "resid_post.6" and sae.cfg.normalization == "standardize"
