"""Hook-site identity at load (interlayer.model.site_identity): every tiny family passes
with its final hidden state after the norm; a checkpoint whose final entry is before the
norm is recognised; a wrong architecture entry is refused at load, naming the site."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.model.architectures import ARCHITECTURES
from interlayer.model.site_identity import SiteIdentity, SiteIdentityError, check_site_identity
from tests.tiny_models import TINY_ARCHITECTURES, make_tiny


@pytest.mark.parametrize("family", sorted(TINY_ARCHITECTURES))
def test_every_family_passes_post_norm_with_no_difference(family):
    hf = make_tiny(family)
    found = check_site_identity(interlayer.ModelAdapter(hf))
    assert isinstance(found, SiteIdentity) and found.last_hidden_state == "post_norm"
    assert found.model_type == hf.config.model_type and found.n_layers == 3 and found.seconds > 0
    assert set(found.max_diff) == {"resid_pre.0", "resid_post.0", "resid_post.1", "ln_final"}
    assert max(found.max_diff.values()) <= 1e-6


def test_load_model_checks_once_and_can_be_turned_off():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    assert model.site_identity is not None and model.last_hidden_state == "post_norm"
    first = model.site_identity
    assert interlayer.load_model(model).site_identity is first  # an adapter is not re-checked
    unchecked = interlayer.load_model(make_tiny("llama"), check_sites=False)
    assert unchecked.site_identity is None and unchecked.last_hidden_state is None


def test_bfloat16_passes():
    model = interlayer.ModelAdapter(make_tiny("gemma3").to(torch.bfloat16))
    assert check_site_identity(model).last_hidden_state == "post_norm"


def _replace_last_hidden_state(hf, value_fn):
    """A forward hook on the whole model that swaps its final hidden_states entry, as a
    checkpoint whose decoder records it elsewhere would return it."""
    def hook(module, args, kwargs, output):
        if getattr(output, "hidden_states", None) is not None:
            hidden = output.hidden_states
            output.hidden_states = (*hidden[:-1], value_fn(hidden))
        return output

    return hf.register_forward_hook(hook, with_kwargs=True)


def test_a_pre_norm_final_hidden_state_is_recognised():
    hf = make_tiny("qwen2")
    model = interlayer.ModelAdapter(hf)
    last = {}
    hf.model.layers[-1].register_forward_hook(lambda m, a, out: last.__setitem__("x", out))
    _replace_last_hidden_state(hf, lambda hidden: last["x"])  # resid_post.{L-1}, before model.norm
    found = check_site_identity(model)
    assert found.last_hidden_state == "pre_norm" and "resid_post.2" in found.max_diff


def test_a_final_hidden_state_that_is_neither_is_refused_naming_the_site():
    hf = make_tiny("llama")
    _replace_last_hidden_state(hf, lambda hidden: hidden[-1] + 0.5)
    with pytest.raises(SiteIdentityError, match=r"site ln_final differs .* by up to 0\.5"):
        check_site_identity(interlayer.ModelAdapter(hf))


def test_a_wrong_architecture_entry_is_refused_at_load(monkeypatch):
    # as if a family's blocks were registered at the wrong path: blocks 1 and 2 swapped
    model = interlayer.ModelAdapter(make_tiny("mistral"))
    first, second, third = model.blocks
    model.blocks = torch.nn.ModuleList([first, third, second])
    wrong_block = r"mistral: site resid_post\.1 differs from the model's hidden_states\[2\]"
    with pytest.raises(SiteIdentityError, match=wrong_block):
        check_site_identity(model)
    # a final norm registered at the wrong module: load_model refuses before returning
    wrong = dataclasses.replace(ARCHITECTURES["llama"], final_norm="model.layers.0.input_layernorm")
    monkeypatch.setitem(ARCHITECTURES, "llama", wrong)
    with pytest.raises(SiteIdentityError, match="ln_final|resid_post.2") as info:
        interlayer.load_model(make_tiny("llama"))
    assert isinstance(info.value, InterlayerError) and "check_sites=False" in str(info.value)
    assert "\n" not in str(info.value)
    assert interlayer.load_model(make_tiny("llama"), check_sites=False).site_identity is None


def test_too_short_a_probe_is_refused():
    with pytest.raises(SiteIdentityError, match="at least 2"):
        check_site_identity(interlayer.ModelAdapter(make_tiny("llama")), tokens=1)


def _hooked(hf):
    return [name for name, m in hf.named_modules() if m._forward_hooks or m._forward_pre_hooks]


def test_the_check_leaves_no_hook_and_hidden_states_still_work(tiny_ids):
    # transformers installs its capture hooks on the first output_hidden_states pass; a hook
    # inside a block would keep compiled blocks eager, so the check takes them away again
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    assert model.site_identity is not None and _hooked(hf) == []
    with torch.no_grad():
        hidden = hf(input_ids=tiny_ids, output_hidden_states=True).hidden_states
    assert len(hidden) == model.n_layers + 1 and _hooked(hf)  # reinstalled by transformers, as without the check
    _, acts = model.run(tiny_ids, read=["resid_post.1"])
    torch.testing.assert_close(acts["resid_post.1"], hidden[2], atol=0, rtol=0)
    # a model whose capture hooks were installed before: they stay, and keep working
    installed = _hooked(hf)
    interlayer.load_model(hf)
    assert _hooked(hf) == installed
    with torch.no_grad():
        assert len(hf(input_ids=tiny_ids, output_hidden_states=True).hidden_states) == model.n_layers + 1
