"""Every hook site of every family in tests/tiny_models.py against plain Hugging Face
forward hooks on the modules named here, by hand, from each family's modeling code in
transformers (not from interlayer's architecture table).

``resid_pre``/``resid_post`` are a block's input/output, ``attn_out``/``mlp_out`` the
output of what each sublayer adds to the residual stream, ``resid_mid`` the input of
the module that reads the stream between the sublayers (the pre-MLP norm), ``mlp_in``
the MLP's input and ``ln_final`` the final norm's output. On the mixture-of-experts
families ``mlp`` is the sparse-MoE block (router and experts inside it)."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.model.architectures import supported_model_types
from tests.tiny_models import TINY_ARCHITECTURES, make_tiny

_LLAMA_LIKE = dict(layers="model.layers", final_norm="model.norm", attn_out="self_attn", mlp_out="mlp",
                   resid_mid="post_attention_layernorm")
_GEMMA_LIKE = dict(_LLAMA_LIKE, attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                   resid_mid="pre_feedforward_layernorm")
_NEOX = dict(layers="gpt_neox.layers", final_norm="gpt_neox.final_layer_norm", attn_out="attention", mlp_out="mlp",
             resid_mid="post_attention_layernorm")

HF_MODULES = {
    "gemma": _LLAMA_LIKE,
    "gemma2": _GEMMA_LIKE,
    "gemma3": _GEMMA_LIKE,
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "mixtral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen2_moe": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "qwen3_moe": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,
    # OLMo-2 norms after each sublayer: the MLP itself reads resid_mid
    "olmo2": dict(_GEMMA_LIKE, resid_mid="mlp"),
    "gpt2": dict(layers="transformer.h", final_norm="transformer.ln_f", attn_out="attn", mlp_out="mlp",
                 resid_mid="ln_2"),
    "gpt_neox": _NEOX,
    "gpt_neox_parallel": dict(_NEOX, resid_mid=None),  # both sublayers read resid_pre
}
"""Per tiny family: the Hugging Face modules whose inputs/outputs are the sites."""

MOE_BLOCKS = {"mixtral": "MixtralSparseMoeBlock", "qwen2_moe": "Qwen2MoeSparseMoeBlock",
              "qwen3_moe": "Qwen3MoeSparseMoeBlock"}


def _first(value):
    return value[0] if isinstance(value, tuple) else value


def _input(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _hf_sites(hf, modules: dict, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every site's value from plain forward hooks on the named Hugging Face modules."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def out_hook(name):
        return lambda module, args, output: seen.__setitem__(name, _first(output).detach().clone())

    def in_hook(name):
        return lambda module, args, kwargs: seen.__setitem__(name, _input(args, kwargs).detach().clone())

    for layer, block in enumerate(hf.get_submodule(modules["layers"])):
        handles.append(block.register_forward_pre_hook(in_hook(f"resid_pre.{layer}"), with_kwargs=True))
        handles.append(block.register_forward_hook(out_hook(f"resid_post.{layer}")))
        handles.append(block.get_submodule(modules["attn_out"]).register_forward_hook(out_hook(f"attn_out.{layer}")))
        handles.append(block.get_submodule(modules["mlp_out"]).register_forward_hook(out_hook(f"mlp_out.{layer}")))
        handles.append(block.mlp.register_forward_pre_hook(in_hook(f"mlp_in.{layer}"), with_kwargs=True))
        if modules["resid_mid"] is not None:
            mid = block.get_submodule(modules["resid_mid"])
            handles.append(mid.register_forward_pre_hook(in_hook(f"resid_mid.{layer}"), with_kwargs=True))
    handles.append(hf.get_submodule(modules["final_norm"]).register_forward_hook(out_hook("ln_final")))
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_every_tiny_family_has_its_modules_named_here_and_is_registered():
    assert set(HF_MODULES) == set(TINY_ARCHITECTURES)
    registered = set(supported_model_types())
    for family in TINY_ARCHITECTURES:
        assert make_tiny(family).config.model_type in registered, family
    assert {"gemma", "mixtral", "qwen2_moe", "qwen3_moe"} <= registered


@pytest.mark.parametrize("family", sorted(TINY_ARCHITECTURES))
def test_every_site_equals_a_plain_hf_hook(family):
    hf = make_tiny(family)
    model = interlayer.ModelAdapter(hf)
    ids = torch.tensor([[1, 7, 12, 30, 44, 59]])
    want = _hf_sites(hf, HF_MODULES[family], ids)
    sites = [*model.sites(), "ln_final"]
    assert set(sites) == set(want), family  # no resid_mid on a parallel residual, nothing else missing
    _, got = model.run(ids, read=sites)
    for site in sites:
        torch.testing.assert_close(got[site], want[site], atol=1e-6, rtol=0, msg=lambda m, s=site: f"{family} {s}: {m}")
    for layer in range(model.n_layers):  # the sites are distinct activations, not one read twice
        assert not torch.allclose(got[f"attn_out.{layer}"], got[f"mlp_out.{layer}"])
        assert not torch.allclose(got[f"resid_pre.{layer}"], got[f"resid_post.{layer}"])


@pytest.mark.parametrize("family", sorted(MOE_BLOCKS))
def test_moe_mlp_out_is_the_sparse_moe_blocks_output(family):
    hf = make_tiny(family)
    model = interlayer.ModelAdapter(hf)
    ids = torch.tensor([[1, 9, 17, 25, 33]])
    kinds = {type(block.mlp).__name__ for block in hf.model.layers}
    assert MOE_BLOCKS[family] in kinds  # (Qwen3-MoE's tiny config keeps block 1 dense)
    moe_layer = next(i for i, block in enumerate(hf.model.layers) if type(block.mlp).__name__ == MOE_BLOCKS[family])
    _, got = model.run(ids, read=[f"mlp_in.{moe_layer}", f"mlp_out.{moe_layer}", f"resid_mid.{moe_layer}",
                                  f"resid_post.{moe_layer}"])
    with torch.no_grad():  # the MoE block run by hand on the site's input: routed experts (+ shared expert)
        hand = hf.model.layers[moe_layer].mlp(got[f"mlp_in.{moe_layer}"])
    torch.testing.assert_close(got[f"mlp_out.{moe_layer}"], hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[f"resid_mid.{moe_layer}"] + got[f"mlp_out.{moe_layer}"],
                               got[f"resid_post.{moe_layer}"], atol=1e-6, rtol=0)


def test_gemma_1_embedding_scale_is_in_resid_pre_0():
    hf = make_tiny("gemma")
    model = interlayer.ModelAdapter(hf)
    ids = torch.tensor([[1, 5, 9]])
    _, got = model.run(ids, read=["resid_pre.0"])
    raw = hf.model.embed_tokens.weight[ids]
    torch.testing.assert_close(got["resid_pre.0"], raw * hf.config.hidden_size ** 0.5, atol=1e-5, rtol=1e-5)
    assert model.logit_softcap is None
