"""saes.top_contexts: the strongest activations of the most active latents, with their text."""

import pytest
import torch

import interlayer
from interlayer import collect
from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig, top_contexts
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def test_top_contexts_are_the_strongest_activations_with_their_text(model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(" ".join(f"w{4 + (i * j) % 60}" for i in range(20)) for j in range(30)))
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=model.d_model, d_sae=16, arch="relu", site="resid_post.1"))
    frame = top_contexts(sae, model, str(path), tokens=60, context_length=16, latents=2, per_latent=3, window=2)
    assert list(frame.columns) == ["latent", "activation", "context"] and len(frame) == 6
    acts = collect(model, str(path), "resid_post.1", context_length=16, limit=4, progress=False)  # 60 // 15 contexts
    with torch.no_grad():
        codes = sae.encode(acts["resid_post.1"]).float()
    best = torch.argsort(codes.max(0).values, descending=True)[:2].tolist()
    assert frame.latent.tolist() == [best[0]] * 3 + [best[1]] * 3
    for latent in best:
        values, rows = torch.topk(codes[:, latent], 3)
        got = frame[frame.latent == latent]
        assert got.activation.tolist() == pytest.approx(values.tolist())
        for row, context in zip(rows.tolist(), got.context):
            seq = acts.meta["sequence"]
            same = (seq == seq[row]).nonzero()[:, 0]
            lo, hi = max(int(same.min()), row - 2), min(int(same.max()), row + 2)
            pieces = model.token_strings(acts.meta["token_id"][lo:hi + 1].tolist())
            pieces[row - lo] = f"[{pieces[row - lo]}]"
            assert context == "".join(pieces)
    # the site defaults to the SAE's own
    assert top_contexts(sae, model, str(path), tokens=60, context_length=16).equals(
        top_contexts(sae, model, str(path), "resid_post.1", tokens=60, context_length=16))
    with pytest.raises(InterlayerError, match="latents must be at least 1"):
        top_contexts(sae, model, str(path), latents=0)
    with pytest.raises(InterlayerError, match="names no hook site"):
        top_contexts(SAE(SAEConfig(d_in=model.d_model, d_sae=4, arch="relu")), model, str(path))
