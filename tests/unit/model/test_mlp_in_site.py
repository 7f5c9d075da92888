"""The ``mlp_in`` site: the MLP module's input, after its pre-norm, read and written,
against the norm applied by hand to resid_mid and a plain torch hook on the MLP."""

from __future__ import annotations

import pytest
import torch

import interlayer
from tests.tiny_models import make_tiny

# the pre-MLP norm of each family (OLMo-2 has none: the MLP reads resid_mid)
PRE_MLP_NORM = {"llama": "post_attention_layernorm", "gemma3": "pre_feedforward_layernorm",
                "gemma2": "pre_feedforward_layernorm"}


@pytest.mark.parametrize("family", sorted(PRE_MLP_NORM))
def test_mlp_in_is_the_pre_mlp_norm_of_resid_mid(family):
    hf = make_tiny(family)
    model = interlayer.ModelAdapter(hf)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    seen, direct = {}, {}
    with model.hooks({"mlp_in.1": lambda x: seen.__setitem__("mlp_in", x.clone()),
                      "resid_mid.1": lambda x: seen.__setitem__("resid_mid", x.clone())}):
        model.model(ids)
    mlp = hf.model.layers[1].mlp
    handle = mlp.register_forward_pre_hook(lambda m, args: direct.__setitem__("x", args[0].clone()))
    hf(ids)
    handle.remove()
    norm = getattr(hf.model.layers[1], PRE_MLP_NORM[family])
    torch.testing.assert_close(seen["mlp_in"], direct["x"])
    torch.testing.assert_close(seen["mlp_in"], norm(seen["resid_mid"]))
    assert not torch.allclose(seen["mlp_in"], seen["resid_mid"])


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_mlp_in_write_reaches_the_mlp(family):
    hf = make_tiny(family)
    model = interlayer.ModelAdapter(hf)
    ids = torch.tensor([[1, 5, 9, 13]])
    spec_out = model.spec.mlp_out
    out = {}
    with model.hooks({"mlp_in.0": lambda x: torch.zeros_like(x),
                      "mlp_out.0": lambda y: out.__setitem__("y", y.clone())}):
        edited = model.model(ids).logits
    block = hf.model.layers[0]
    zero_mlp = block.mlp(torch.zeros(1, 4, model.d_model))
    expected = zero_mlp if spec_out == "mlp" else block.post_feedforward_layernorm(zero_mlp)
    torch.testing.assert_close(out["y"], expected)
    assert not torch.allclose(edited, hf(ids).logits)
    assert "mlp_in.0" in model.sites() and len(model.expand_sites("mlp_in.*")) == model.n_layers
