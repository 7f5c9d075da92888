"""Integration: lenses on the real Gemma 3 270M against direct computations."""

import pytest
import torch

from interlayer.decoding import LayerDecoder
from interlayer.lens import TunedLens, compare_lenses, latent_language, train_tuned_lens
from interlayer.lens.prefixes import PrefixIndex
from interlayer.lens.tuning import stacked_resid
from interlayer.model.loading import SAMPLE_TEXT
from interlayer import collect

pytestmark = pytest.mark.integration


def test_prefix_sets_on_gemma(gemma):
    index = PrefixIndex(gemma.tokenizer)
    vocab = gemma.tokenizer.get_vocab()
    assert index.style == "sentencepiece"
    flower = index.ids("flower")
    assert vocab["▁flower"] in flower and vocab["f"] in flower and vocab["▁fl"] in flower
    by_id = {i: t for t, i in vocab.items()}
    assert all("flower".startswith(by_id[i].removeprefix("▁")) for i in flower)  # only prefixes, nothing else
    assert vocab["▁flow"] in flower and vocab.get("▁flour", -1) not in flower
    assert vocab["花"] in index.ids("花")


def test_latent_probabilities_equal_direct_computation(gemma):
    result = latent_language(gemma, src="fr", tgt="zh", limit=8, shots=3, progress=False)
    index = PrefixIndex(gemma.tokenizer)
    for i in (0, 3):
        row = result.words.iloc[i]
        ids = gemma.tokenizer(row.prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = gemma.model(input_ids=ids, output_hidden_states=True)
        for layer in (4, 12, 17):
            if layer < 17:
                hidden = out.hidden_states[layer + 1][0, -1]
                logp = torch.log_softmax(gemma.unembed_resid(hidden).float(), -1)
            else:  # the last layer: the model's own output distribution
                logp = torch.log_softmax(out.logits[0, -1].float(), -1)
            for word, got in ((row.zh, result.p_target), (row.en, result.p_latent["en"]), (row.fr, result.p_source)):
                want = float(logp.detach()[sorted(index.ids(word))].exp().sum())
                assert got[i, layer] == pytest.approx(want, abs=1e-5, rel=1e-4)


@pytest.mark.slow
def test_tuned_lens_at_init_equals_logit_lens_and_training_beats_it(gemma):
    acts = collect(gemma, str(SAMPLE_TEXT), "resid_post.*", context_length=64, limit=40, progress=False)
    train = acts.rows(acts.meta["sequence"] < 32)
    held_out = acts.rows((acts.meta["sequence"] >= 32) & (acts.meta["sequence"] < 36))
    hidden = stacked_resid(held_out, gemma.n_layers)
    untrained = TunedLens.for_model(gemma, layers=[4, 12])
    a = LayerDecoder(gemma).decode(hidden[[4, 12]], top_k=5, entropy=True)
    b = LayerDecoder(gemma, lens=untrained).decode(hidden[[4, 12]], top_k=5, entropy=True, layers=[4, 12])
    assert torch.equal(a.top_ids, b.top_ids) and torch.equal(a.entropy, b.entropy)

    # The library's default learning rate; a higher one with small batches overshoots
    # at late layers, where the logit lens is already close (see the README).
    lens = train_tuned_lens(gemma, stacked_resid(train, gemma.n_layers), layers=[4, 12], steps=60, batch_size=32,
                            warmup=5, progress=False)
    frame = compare_lenses(gemma, lens, held_out, layers=[4, 12]).to_frame()
    assert (frame.kl_tuned < frame.kl_logit).all(), frame
    assert (frame.ce_tuned < frame.ce_logit).all(), frame
