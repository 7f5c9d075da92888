"""Activation patching and causal tracing through the store equal a direct plain-hook
implementation (PyTorch hooks on the Hugging Face modules, the full model run for every
cell) on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interlayer
from interlayer.model.adapter import ModelAdapter
from interlayer.store.patching import EmbeddingNoise, denoising, noising, patch_grid, record
from tests.tiny_models import make_tiny

IDS = [1, 5, 9, 14, 22, 31, 7, 40]
SUBJECT = (2, 3, 4)
TARGET = 17


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _with_hidden(output, value):
    return (value, *output[1:]) if isinstance(output, tuple) else value


def direct_probability(hf, ids, rows=1, noise=None, restore=None):
    """P(TARGET) at the last position, mean over rows: ``noise`` [rows, |SUBJECT|, d] added
    to block 0's input at SUBJECT, ``restore`` = (layer, position, value) written into
    block ``layer``'s output."""
    blocks = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    handles = []
    if noise is not None:
        def pre(module, args, kwargs):
            x = (args[0] if args else kwargs["hidden_states"]).clone()
            x[:, list(SUBJECT)] += noise.to(x.dtype)
            if args:
                return (x, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x}
        handles.append(blocks[0].register_forward_pre_hook(pre, with_kwargs=True))
    if restore is not None:
        layer, position, value = restore

        def post(module, args, output):
            x = _hidden(output).clone()
            x[:, position] = value
            return _with_hidden(output, x)
        handles.append(blocks[layer].register_forward_hook(post))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids] * rows)).logits[:, -1].float()
    finally:
        for h in handles:
            h.remove()
    return float(torch.softmax(logits, -1)[:, TARGET].mean())


def direct_clean_states(hf, ids):
    blocks = hf.model.layers if hasattr(hf, "model") else hf.transformer.h
    states = {}
    handles = [b.register_forward_hook(lambda m, a, o, l=l: states.__setitem__(l, _hidden(o)[0].clone()))
               for l, b in enumerate(blocks)]
    with torch.no_grad():
        hf(torch.tensor([ids]))
    for h in handles:
        h.remove()
    return states


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_noise_tracing_of_the_residual_stream_equals_plain_hooks(arch):
    hf = make_tiny(arch)
    model = ModelAdapter(hf)
    noise = EmbeddingNoise(SUBJECT, std=2.0, samples=4, seed=3)
    sites = [f"resid_post.{l}" for l in range(model.n_layers)]
    clean = record(model, IDS, sites)
    grid = patch_grid(model, IDS, clean, [(s,) for s in sites], list(range(len(IDS))), TARGET,
                      corruption={"resid_pre.0": noise.edit(model.d_model)}, rows=4, first_changed=min(SUBJECT))
    states = direct_clean_states(hf, IDS)
    raw = noise.noise(model.d_model)
    assert grid.base == pytest.approx(direct_probability(hf, IDS, 4, raw), rel=1e-4, abs=1e-7)
    for l in range(model.n_layers):
        for p in range(len(IDS)):
            want = direct_probability(hf, IDS, 4, raw, (l, p, states[l][p]))
            assert float(grid.probability[l, p]) == pytest.approx(want, rel=1e-4, abs=1e-7), (l, p)
    assert not np.allclose(grid.probability.numpy(), grid.base)  # restorations after the subject matter


def test_denoising_and_noising_between_prompts_equal_plain_hooks():
    hf = make_tiny("llama")
    model = ModelAdapter(hf)
    other = IDS[:3] + [50, 51] + IDS[5:]
    sites = [f"resid_post.{l}" for l in range(model.n_layers)]
    den = denoising(model, IDS, other, sites, TARGET)
    noi = noising(model, IDS, other, sites, TARGET)
    clean, corrupt = direct_clean_states(hf, IDS), direct_clean_states(hf, other)
    assert den.base == pytest.approx(direct_probability(hf, other), rel=1e-4)
    assert noi.base == pytest.approx(direct_probability(hf, IDS), rel=1e-4)
    for l in range(model.n_layers):
        for p in range(len(IDS)):
            assert float(den.probability[l, p]) == pytest.approx(
                direct_probability(hf, other, restore=(l, p, clean[l][p])), rel=1e-4, abs=1e-7)
            assert float(noi.probability[l, p]) == pytest.approx(
                direct_probability(hf, IDS, restore=(l, p, corrupt[l][p])), rel=1e-4, abs=1e-7)


def test_bad_patching_input_is_refused_before_any_pass():
    model = ModelAdapter(make_tiny("llama"))
    with pytest.raises(interlayer.InterlayerError, match="same length"):
        denoising(model, IDS, IDS[:-1], ["resid_post.0"], TARGET)
    with pytest.raises(interlayer.InterlayerError, match="no recorded activations"):
        patch_grid(model, IDS, {}, [("resid_post.0",)], [0], TARGET)
    with pytest.raises(interlayer.InterlayerError, match="outside the 8-token input"):
        patch_grid(model, IDS, {"resid_post.0": torch.zeros(8, 32)}, [("resid_post.0",)], [9], TARGET)
    with pytest.raises(interlayer.InterlayerError, match="at least one position"):
        EmbeddingNoise((), std=1.0)
