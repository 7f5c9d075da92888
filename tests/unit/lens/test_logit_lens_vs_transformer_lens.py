"""The logit lens against TransformerLens itself: its TransformerBridge's cached
``blocks.l.hook_resid_post`` through the bridge's own ``ln_final`` and ``unembed`` give, at
every layer and position, the top-1 token and probability, the entropy, KL(final || layer)
and the target probability that ``interlayer.lens.logit_lens`` reports."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.lens import logit_lens
from tests.tiny_models import make_tiny, make_tokenizer

pytestmark = pytest.mark.peers
PROMPTS = ["w5 w9 w12 w33 w7", "w40 w41 w8"]


def _peer_layer_logits(bridge, ids: torch.Tensor, n_layers: int) -> torch.Tensor:
    """``[layers, positions, vocab]`` logits of one prompt, TransformerLens's way."""
    with torch.no_grad():
        _, cache = bridge.run_with_cache(ids)
        return torch.stack([bridge.unembed(bridge.ln_final(cache[f"blocks.{l}.hook_resid_post"]))[0].float()
                            for l in range(n_layers)])


@pytest.mark.parametrize("arch", ["llama", "gemma3", "qwen2"])
def test_every_number_equals_transformer_lens_decoding(arch, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = make_tiny(arch), make_tokenizer(tmp_path / "tok")
    model = interlayer.load_model(hf, tokenizer=tok)
    ours = logit_lens(model, PROMPTS, targets=["w12"], positions="all")
    bridge = TransformerBridge.boot_transformers(arch, hf_model=hf, tokenizer=tok)
    target = tok("w12", add_special_tokens=False).input_ids[0]
    start = 0
    for prompt in PROMPTS:
        ids = torch.tensor([tok(prompt).input_ids])
        logits = _peer_layer_logits(bridge, ids, model.n_layers)
        logp = torch.log_softmax(logits, -1)
        p = logp.exp()
        rows = slice(start, start + ids.shape[1])
        top_p, top_id = p.max(-1)
        assert torch.equal(ours.top_ids[:, rows, 0], top_id)
        torch.testing.assert_close(ours.top_probs[:, rows, 0].float(), top_p, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.entropy[:, rows].float(), -(p * logp).sum(-1), atol=1e-4, rtol=1e-4)
        final = logp[-1]
        kl = (final.exp() * (final - logp)).sum(-1)
        torch.testing.assert_close(ours.kl_to_final[:, rows].float(), kl, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ours.target_probs[:, rows, 0].float(), p[..., target], atol=1e-5, rtol=1e-4)
        start += ids.shape[1]
    assert start == len(ours.rows)
    # the last layer is the model's own prediction
    with torch.no_grad():
        own = hf(torch.tensor([tok(PROMPTS[0]).input_ids])).logits[0].float().softmax(-1)
    torch.testing.assert_close(ours.top_probs[-1, : own.shape[0], 0].float(), own.max(-1).values, atol=1e-5, rtol=1e-4)
