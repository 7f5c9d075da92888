"""Injection against plain Hugging Face forward hooks: forward passes, generation with
the KV cache, positions, operators, norm preservation, padding, nnsight and
TransformerLens objects, and the persistent handle."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.steering import SteeringVector, steer
from interlayer.steering.inject import NonFiniteSteeringError
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def setup(tmp_path):
    hf, tok = make_tiny("llama"), make_tokenizer(tmp_path / "tok")
    torch.manual_seed(3)
    vector = SteeringVector({1: torch.randn(32), 2: torch.randn(32)}, model="tiny")
    return hf, tok, interlayer.load_model(hf, tokenizer=tok), vector


def _with_hook(hf, layer, fn):
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = fn(hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hf.model.layers[layer].register_forward_hook(hook)


def test_forward_steering_equals_a_plain_hook_and_is_removed(setup):
    hf, tok, model, v = setup
    ids = torch.tensor([[1, 5, 9, 12, 30]])
    with torch.no_grad():
        plain = hf(ids).logits
        handles = [_with_hook(hf, 1, lambda h: h + 3.0 * v[1]), _with_hook(hf, 2, lambda h: h + 3.0 * v[2])]
        expected = hf(ids).logits
        for h in handles:
            h.remove()
        with steer(model, v, 3.0):
            got = hf(ids).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(hf(ids).logits, plain)  # removed on exit
        handle = steer(model, v, 3.0, layers=[2]).attach()
        assert handle.attached
        one = _with_hook(hf, 2, lambda h: h + 3.0 * v[2])
        handle.remove()
        expected_one = hf(ids).logits
        one.remove()
        handle.attach()
        torch.testing.assert_close(hf(ids).logits, expected_one, atol=1e-5, rtol=0)
        handle.remove()
        assert not handle.attached


def test_ablate_projects_the_direction_out_and_norms_can_be_kept(setup):
    hf, tok, model, v = setup
    ids = torch.tensor([[1, 5, 9, 12, 30]])
    unit = v[1] / v[1].norm()
    with steer(model, v, 1.0, layers=[1], operator="ablate"):
        _, acts = model.run(ids, read=["resid_post.1"])
    assert float((acts["resid_post.1"] @ unit).abs().max()) < 1e-4
    _, clean = model.run(ids, read=["resid_post.1"])
    with steer(model, v, 5.0, layers=[1], preserve_norm=True):
        _, kept = model.run(ids, read=["resid_post.1"])
    torch.testing.assert_close(kept["resid_post.1"].norm(dim=-1), clean["resid_post.1"].norm(dim=-1), atol=1e-4, rtol=1e-5)
    assert not torch.allclose(kept["resid_post.1"], clean["resid_post.1"])


def test_several_vectors_at_once_add_up(setup):
    hf, tok, model, v = setup
    w = SteeringVector({1: torch.randn(32)})
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        h = _with_hook(hf, 1, lambda x: x + 2.0 * v[1] - 1.5 * w[1])
        expected = hf(ids).logits
        h.remove()
        with steer(model, [v, w], [2.0, -1.5], layers=[1]):
            got = hf(ids).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def _generate(hf, batch, n=6):
    with torch.no_grad():
        return hf.generate(**batch, max_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("positions", ["prompt", "generated", "all"])
def test_generation_positions_equal_a_plain_hook_that_knows_the_step(setup, positions):
    hf, tok, model, v = setup
    batch = model.tokenize("w5 w9 w12 w30")

    def add_when(h):
        prompt_pass = h.shape[1] > 1
        if positions == "all" or (positions == "prompt") == prompt_pass:
            return h + 6.0 * v[1]
        return h

    h = _with_hook(hf, 1, add_when)
    expected = _generate(hf, batch)
    h.remove()
    with steer(model, v, 6.0, layers=[1], positions=positions):
        got = _generate(hf, batch)
    assert torch.equal(got, expected)
    assert not torch.equal(got, _generate(hf, batch)) or positions == "prompt"


def test_from_index_steers_later_tokens_only(setup):
    hf, tok, model, v = setup
    ids = torch.tensor([[1, 5, 9, 12, 30, 31]])
    _, clean = model.run(ids, read=["resid_post.1"])
    with steer(model, v, 2.0, layers=[1], positions=3):
        _, got = model.run(ids, read=["resid_post.1"])
    delta = got["resid_post.1"] - clean["resid_post.1"]
    assert float(delta[0, :3].abs().max()) == 0.0
    torch.testing.assert_close(delta[0, 3:], (2.0 * v[1]).expand(3, -1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_padded_inputs_are_steered_as_one_at_a_time(setup, side):
    hf, tok, model, v = setup
    texts = ["w5 w9 w12 w30 w31", "w7 w8"]
    for positions in ("all", 2):
        with steer(model, v, 4.0, layers=[1, 2], positions=positions):
            batch = model.tokenize(texts, padding_side=side)
            with torch.no_grad():
                logits = hf(**batch).logits
            for row, text in enumerate(texts):
                single = model.tokenize(text)
                with torch.no_grad():
                    alone = hf(**single).logits[0]
                real = batch["attention_mask"][row].bool()
                torch.testing.assert_close(logits[row][real], alone, atol=1e-4, rtol=1e-4)


def test_left_padded_generation_equals_one_at_a_time(setup):
    hf, tok, model, v = setup
    texts = ["w5 w9 w12 w30 w31", "w7 w8"]
    with steer(model, v, 6.0, layers=[1], positions="generated"):
        together = _generate(hf, model.tokenize(texts, padding_side="left"), 4)[:, -4:]
        alone = [_generate(hf, model.tokenize(t), 4)[0, -4:] for t in texts]
    assert torch.equal(together, torch.stack(alone))


@pytest.mark.peers
def test_nnsight_and_transformer_lens_objects_steer_like_the_plain_model(tmp_path):
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = make_tiny("llama"), make_tokenizer(tmp_path / "tok")
    v = SteeringVector({1: torch.randn(32)})
    ids = torch.tensor([[1, 5, 9, 12]])
    plain = interlayer.load_model(hf, tokenizer=tok)
    with steer(plain, v, 3.0):
        expected, _ = plain.run(ids)
    for wrapped in (LanguageModel(hf, tokenizer=tok), TransformerBridge.boot_transformers("llama", hf_model=hf, tokenizer=tok)):
        model = interlayer.load_model(wrapped)
        with steer(model, v, 3.0):
            got, _ = model.run(ids)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_bad_injections_are_clear_errors(setup):
    hf, tok, model, v = setup
    with pytest.raises(InterlayerError, match="this vector has no layer 0; its layers: \\[1, 2\\]"):
        steer(model, v, 1.0, layers=[0])
    with pytest.raises(InterlayerError, match="valid choices: 'add', 'ablate'"):
        steer(model, v, operator="scale")
    with pytest.raises(InterlayerError, match="valid choices: 'all', 'prompt', 'generated' or a position index"):
        steer(model, v, positions="middle")
    with pytest.raises(InterlayerError, match="d_model=64, but .* has d_model=32"):
        steer(model, SteeringVector({1: torch.randn(64)}))
    with pytest.raises(NonFiniteSteeringError, match="resid_post.1 with coefficient 1e\\+39"):
        with steer(model, v, 1e39, layers=[1]):
            model.run(torch.tensor([[1, 5, 9]]))
    with pytest.raises(InterlayerError, match="store edits steer every position"):
        steer(model, v, positions="generated").edits()
