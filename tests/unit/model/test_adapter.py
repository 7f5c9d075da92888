"""Hook sites on every supported architecture, read against Hugging Face's own
hidden states and written against hand computations."""

import types

import pytest
import torch
from torch import nn

import interlayer
from interlayer.model.architectures import supported_model_types
from interlayer.errors import LayerIndexError, UnknownSiteError, UnsupportedArchitectureError
from tests.tiny_models import make_tiny


def test_every_required_family_is_registered():
    required = {"gemma3_text", "gemma2", "llama", "qwen2", "qwen3", "mistral", "gpt2", "gpt_neox", "phi3", "olmo2"}
    assert required <= set(supported_model_types())


def test_reads_equal_hf_hidden_states(tiny_hf, tiny_ids):
    model = interlayer.load_model(tiny_hf)
    with torch.no_grad():
        ref = tiny_hf(input_ids=tiny_ids, output_hidden_states=True)
    logits, acts = model.run(tiny_ids, read=model.sites())
    L = model.n_layers
    torch.testing.assert_close(logits, ref.logits, atol=1e-5, rtol=0)
    for layer in range(L):
        torch.testing.assert_close(acts[f"resid_pre.{layer}"], ref.hidden_states[layer], atol=1e-5, rtol=0)
        if layer + 1 < L:
            torch.testing.assert_close(acts[f"resid_post.{layer}"], ref.hidden_states[layer + 1], atol=1e-5, rtol=0)
    # HF's last hidden state is taken after the final norm.
    torch.testing.assert_close(model.final_norm(acts[f"resid_post.{L - 1}"]), ref.hidden_states[L], atol=1e-5, rtol=0)
    torch.testing.assert_close(model.unembed_resid(acts[f"resid_post.{L - 1}"]), ref.logits, atol=1e-5, rtol=0)


def test_sublayer_sites_decompose_the_residual_stream(tiny_hf, tiny_ids):
    model = interlayer.load_model(tiny_hf)
    _, acts = model.run(tiny_ids, read=model.sites())
    for layer in range(model.n_layers):
        pre, attn, mlp, post = (acts[f"{k}.{layer}"] for k in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        assert attn.abs().max() > 1e-3 and mlp.abs().max() > 1e-3
        if model.parallel_residual:
            torch.testing.assert_close(pre + attn + mlp, post, atol=1e-5, rtol=0)
        else:
            mid = acts[f"resid_mid.{layer}"]
            torch.testing.assert_close(pre + attn, mid, atol=1e-6, rtol=0)
            torch.testing.assert_close(mid + mlp, post, atol=1e-6, rtol=0)


def test_attn_and_mlp_out_match_a_hand_computation():
    # Llama: attn_out is o_proj's output; mlp_out is MLP(post_attention_layernorm(resid_mid)).
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    ids = torch.randint(5, 60, (1, 6))
    _, acts = model.run(ids, read=["resid_mid.1", "mlp_out.1"])
    block = model.blocks[1]
    with torch.no_grad():
        hand = block.mlp(block.post_attention_layernorm(acts["resid_mid.1"]))
    torch.testing.assert_close(acts["mlp_out.1"], hand, atol=1e-6, rtol=0)


def test_write_at_resid_pre_0_matches_shifted_embeddings(tiny_hf, tiny_ids):
    model = interlayer.load_model(tiny_hf)
    v = torch.randn(model.d_model)
    logits, _ = model.run(tiny_ids, edit={"resid_pre.0": lambda x: x + v})
    # Hand computation: the same shift added to what HF feeds its first block (a plain
    # pre-hook, so it holds wherever a transformers version applies the embedding scale).
    def shift(module, args, kwargs):
        if args:
            return (args[0] + v, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + v}

    handle = model.blocks[0].register_forward_pre_hook(shift, with_kwargs=True)
    try:
        with torch.no_grad():
            ref = tiny_hf(input_ids=tiny_ids).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


def test_write_at_resid_post_changes_downstream_exactly(tiny_hf, tiny_ids):
    model = interlayer.load_model(tiny_hf)
    L = model.n_layers
    v = torch.randn(model.d_model)
    clean_logits, clean = model.run(tiny_ids, read=model.sites())
    edited_logits, edited = model.run(tiny_ids, read=model.sites(), edit={"resid_post.0": lambda x: x + v})
    torch.testing.assert_close(edited["resid_post.0"], clean["resid_post.0"] + v, atol=0, rtol=0)
    torch.testing.assert_close(edited["resid_pre.1"], clean["resid_pre.1"] + v, atol=0, rtol=0)
    assert (edited["resid_post.1"] - clean["resid_post.1"] - v).abs().max() > 1e-4  # layer 1 reacts
    # Writing at resid_post.0 is the same intervention as writing at resid_pre.1.
    alt_logits, _ = model.run(tiny_ids, edit={"resid_pre.1": lambda x: x + v})
    torch.testing.assert_close(edited_logits, alt_logits, atol=1e-6, rtol=0)
    # And at the last layer the hand computation is the model's head on the shifted state.
    last_logits, _ = model.run(tiny_ids, edit={f"resid_post.{L - 1}": lambda x: x + v})
    torch.testing.assert_close(last_logits, model.unembed_resid(clean[f"resid_post.{L - 1}"] + v), atol=1e-5, rtol=0)
    assert not torch.allclose(last_logits, clean_logits)


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt2", "olmo2"])
def test_write_at_resid_mid(name):
    model = interlayer.load_model(make_tiny(name))
    ids = torch.randint(5, 60, (2, 5))
    v = torch.randn(model.d_model)
    _, clean = model.run(ids, read=["resid_mid.1", "mlp_out.1", "resid_post.1"])
    logits, edited = model.run(ids, read=["resid_mid.1", "resid_post.1"], edit={"resid_mid.1": lambda x: x + v})
    torch.testing.assert_close(edited["resid_mid.1"], clean["resid_mid.1"] + v, atol=1e-5, rtol=0)
    same_logits, _ = model.run(ids, edit={"attn_out.1": lambda x: x + v})
    torch.testing.assert_close(logits, same_logits, atol=1e-5, rtol=0)
    # Edits at resid_pre are visible to a resid_mid edit of the same layer.
    both, acts = model.run(ids, read=["resid_mid.1"], edit={"resid_pre.1": lambda x: x + v, "resid_mid.1": lambda x: x * 0})
    assert acts["resid_mid.1"].abs().max() < 1e-5


def test_edits_apply_during_generation_with_kv_cache():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    ids = torch.randint(5, 60, (1, 5))
    v = 4 * torch.randn(model.d_model)
    shapes = []

    def steer(x):
        shapes.append(tuple(x.shape))
        return x + v

    gen = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad(), model.hooks({"resid_post.1": steer}):
        cached = hf.generate(ids, use_cache=True, **gen)
        uncached = hf.generate(ids, use_cache=False, **gen)
    plain = hf.generate(ids, use_cache=True, **gen)
    assert shapes[0][1] == 5 and shapes[1][1] == 1  # prefill, then one token per step
    assert torch.equal(cached.sequences, uncached.sequences)
    for a, b in zip(cached.scores, uncached.scores):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not all(torch.allclose(a, b) for a, b in zip(cached.scores, plain.scores))


def test_hooks_are_removed_after_the_with_block(tiny_ids):
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    before = hf(input_ids=tiny_ids).logits
    with model.hooks({"resid_post.0": lambda x: x * 0}):
        during = hf(input_ids=tiny_ids).logits
    after = hf(input_ids=tiny_ids).logits
    assert not torch.allclose(before, during)
    assert torch.equal(before, after)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)


def test_stop_early_reads_the_same_activations(tiny_ids):
    model = interlayer.load_model(make_tiny("gemma3"))
    full_logits, full = model.run(tiny_ids, read=["resid_post.1", "mlp_out.0"])
    no_logits, early = model.run(tiny_ids, read=["resid_post.1", "mlp_out.0"], logits=False)
    assert no_logits is None
    for site in full:
        assert torch.equal(full[site], early[site])
    calls = []
    handle = model.blocks[2].register_forward_pre_hook(lambda *a: calls.append(1))
    model.run(tiny_ids, read=["resid_post.1"], logits=False)
    handle.remove()
    assert calls == []  # block 2 never ran


def test_parallel_residual_has_no_resid_mid():
    model = interlayer.load_model(make_tiny("gpt_neox_parallel"))
    assert "resid_mid" not in model.site_kinds()
    with pytest.raises(UnknownSiteError, match="parallel residual"):
        model.site("resid_mid.0")


def test_layer_out_of_range_names_range():
    model = interlayer.load_model(make_tiny("llama"))
    with pytest.raises(LayerIndexError, match=r"0\.\.2"):
        model.run(torch.tensor([[5, 6]]), read=["resid_post.3"])
    with pytest.raises(LayerIndexError, match=r"0\.\.2"):
        model.check_layer(7)


def test_unsupported_architecture_names_class_and_supported():
    class Mamba(nn.Module):
        config = types.SimpleNamespace(model_type="mamba")

    with pytest.raises(UnsupportedArchitectureError) as info:
        interlayer.ModelAdapter(Mamba())
    assert "Mamba" in str(info.value) and "'llama'" in str(info.value) and "'gemma3_text'" in str(info.value)


def test_shape_attributes():
    model = interlayer.load_model(make_tiny("gemma2"))
    assert (model.n_layers, model.d_model, model.vocab_size) == (3, 32, 64)
    assert model.logit_softcap == 2.0
    assert len(model.sites()) == 18 and model.sites()[:2] == ["resid_pre.0", "attn_out.0"]
