"""Integration: the real embedded Gemma 3 270M, against Hugging Face computations."""

import json

import pytest
import torch

from interlayer.decoding import LayerDecoder

pytestmark = pytest.mark.integration

PROMPTS = ["The Eiffel Tower is in the city of", "Le chat dort sur le canapé parce qu'il est fatigué."]


@pytest.fixture(scope="module")
def reference(gemma):
    batch = gemma.tokenize(PROMPTS, padding_side="right")
    with torch.no_grad():
        out = gemma.model(**batch, output_hidden_states=True)
    return batch, out


def test_shape(gemma):
    assert (gemma.n_layers, gemma.d_model, gemma.vocab_size) == (18, 640, 262144)
    assert gemma.model_type == "gemma3_text" and gemma.dtype == torch.float32


def test_every_site_equals_hf_hidden_states(gemma, reference):
    batch, out = reference
    logits, acts = gemma.run(batch["input_ids"], batch["attention_mask"], read=gemma.sites())
    mask = batch["attention_mask"].bool()
    L = gemma.n_layers
    for layer in range(L):
        torch.testing.assert_close(acts[f"resid_pre.{layer}"][mask], out.hidden_states[layer][mask], atol=1e-5, rtol=0)
        mid, post = acts[f"resid_mid.{layer}"], acts[f"resid_post.{layer}"]
        torch.testing.assert_close(acts[f"resid_pre.{layer}"] + acts[f"attn_out.{layer}"], mid, atol=1e-5, rtol=0)
        torch.testing.assert_close(mid + acts[f"mlp_out.{layer}"], post, atol=1e-5, rtol=0)
    torch.testing.assert_close(gemma.final_norm(acts[f"resid_post.{L - 1}"])[mask], out.hidden_states[L][mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[mask], out.logits[mask], atol=1e-4, rtol=0)


def test_decoding_the_final_layer_reproduces_model_logits(gemma, reference):
    batch, out = reference
    _, acts = gemma.run(batch["input_ids"], batch["attention_mask"], read=["resid_post.17"], logits=False)
    n = int(batch["attention_mask"][0].sum())
    hidden = acts["resid_post.17"][0, :n]
    decoder = LayerDecoder(gemma, memory_mb=8)  # forces chunks of a few rows
    ids = [int(t) for t in gemma.tokenizer(" Paris", add_special_tokens=False).input_ids]
    result = decoder.decode(hidden[None], top_k=3, token_ids=ids, probs=True)
    assert result.n_chunks > 1
    logp = torch.log_softmax(out.logits[0, :n].float(), -1)
    torch.testing.assert_close(result.probs[0].log(), logp, atol=1e-4, rtol=0)
    torch.testing.assert_close(decoder.logits(hidden), out.logits[0, :n], atol=1e-4, rtol=0)
    torch.testing.assert_close(result.token_logprobs[0], logp[:, ids], atol=1e-4, rtol=0)
    assert torch.equal(result.top_ids[0], torch.topk(out.logits[0, :n], 3, -1).indices)


def test_write_changes_downstream_as_predicted(gemma, reference):
    batch, _ = reference
    torch.manual_seed(0)
    v = torch.randn(640)
    _, clean = gemma.run(batch["input_ids"], batch["attention_mask"], read=["resid_post.8", "resid_pre.9", "resid_post.17"])
    logits, edited = gemma.run(batch["input_ids"], batch["attention_mask"], read=["resid_pre.9", "resid_post.17"],
                               edit={"resid_post.8": lambda x: x + v})
    torch.testing.assert_close(edited["resid_pre.9"], clean["resid_pre.9"] + v, atol=0, rtol=0)
    assert (edited["resid_post.17"] - clean["resid_post.17"]).abs().max() > 1e-2
    torch.testing.assert_close(logits, gemma.unembed_resid(edited["resid_post.17"]), atol=1e-4, rtol=0)


def test_real_weights_translate(gemma):
    # The sanity check from the project brief: French "fleur" -> English "flower".
    prompt = 'French: "chat" - English: "cat"\nFrench: "maison" - English: "house"\nFrench: "fleur" - English: "'
    batch = gemma.tokenize(prompt)
    logits, _ = gemma.run(batch["input_ids"], batch["attention_mask"])
    assert gemma.token_strings([int(logits[0, -1].argmax())])[0].strip().startswith("flow")


def test_logit_lens_final_row_is_the_models_prediction(gemma):
    from interlayer.lens import logit_lens

    prompt = PROMPTS[0]
    result = logit_lens(gemma, prompt, top_k=2)
    batch = gemma.tokenize(prompt)
    logits, _ = gemma.run(batch["input_ids"], batch["attention_mask"])
    assert torch.equal(result.top_ids[-1, :, 0], logits[0].argmax(-1))
    assert result.kl_to_final[-1].abs().max() < 1e-4 and result.kl_to_final[0].mean() > 1.0
    assert result.table().shape == (18, batch["input_ids"].shape[1])
    fig = result.plot()
    assert fig.data[0].z.shape == (18, batch["input_ids"].shape[1])


def test_info_cli(gemma, capsys):
    from interlayer.cli import dispatch as cli

    assert cli.main(["info", "--model", "gemma-3-270m", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 18 and info["d_model"] == 640 and info["vocab_size"] == 262144
    assert "resid_mid.{0..17}" in info["sites"]
