"""Sweeps, behaviour scores and perplexity against per-prompt loops with plain hooks;
GGUF control vectors through the gguf package; the steer commands."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.steering import ContrastPair, SteeringVector, answer_prompts, from_gguf, sweep, to_gguf, train_vectors
from tests.tiny_models import make_tiny, make_tokenizer

PAIRS = [ContrastPair(f"w{5 + i} w{20 + i} w{40 - i}", "w10 w12" if i % 2 else "w11 w13", "w11 w13" if i % 2 else "w10 w12")
         for i in range(12)]
TEXT = [" ".join(f"w{4 + (3 * j + i) % 60}" for i in range(30)) for j in range(20)]


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def _adding_hook(hf, layer, add):
    """A plain forward hook adding ``add`` to block ``layer``'s output (None: no hook)."""
    if add is None:
        return None

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        return (h + add, *output[1:]) if isinstance(output, tuple) else h + add

    return hf.model.layers[layer].register_forward_hook(hook)


def _p_matching_direct(model, pair, hook_layer=None, add=None):
    """One prompt at a time, a plain forward hook on the block: the reference."""
    hf, tok = model.model, model.tokenizer
    a = tok(pair.question + " " + pair.matching).input_ids
    b = tok(pair.question + " " + pair.not_matching).input_ids
    k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    handle = _adding_hook(hf, hook_layer, add)
    with torch.no_grad():
        logits = hf(torch.tensor([a[:k]])).logits[0, -1].double()
    if handle:
        handle.remove()
    return float(torch.softmax(logits[[a[k], b[k]]], -1)[0])


def _ppl_direct(model, layer=None, add=None, tokens=200, context=32):
    contexts = [c.ids for c in interlayer.store.inputs.Tokenized(model).packed(TEXT, context)][: math.ceil(tokens / (context - 1))]
    hf = model.model
    handle = _adding_hook(hf, layer, add)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in contexts:
            logp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
            # the store's token rows: every non-BOS position that has a next token
            total += float(-logp[1:-1].gather(-1, torch.tensor(ids[2:])[:, None]).sum())
            count += len(ids) - 2
    if handle:
        handle.remove()
    return math.exp(total / count)


def test_sweep_equals_a_per_prompt_loop_with_plain_hooks(model):
    v = train_vectors(model, PAIRS, [0, 1], progress=False)
    result = sweep(model, v, PAIRS, [0, 1], [-3.0, 2.0], n=None, perplexity_text=TEXT, perplexity_tokens=200,
                   progress=False)
    # the perplexity passes pack contexts of min(128, max_positions=64) tokens
    base = np.array([_p_matching_direct(model, p) for p in PAIRS])
    assert result.base == pytest.approx(float(base.mean()), abs=1e-6)
    base_ppl = _ppl_direct(model, context=64)
    assert result.base_perplexity == pytest.approx(base_ppl, rel=1e-5)
    for i, layer in enumerate([0, 1]):
        for j, coef in enumerate([-3.0, 2.0]):
            steered = np.array([_p_matching_direct(model, p, layer, coef * v[layer]) for p in PAIRS])
            assert result.shift[i, j] == pytest.approx(float((steered - base).mean()), abs=1e-6)
            ppl = _ppl_direct(model, layer, coef * v[layer], context=64)
            assert result.delta_perplexity[i, j] == pytest.approx(ppl - base_ppl, rel=1e-4, abs=1e-6)
    # the random baseline: a seeded direction of the same norm
    from interlayer.steering.evaluation import random_like

    r = random_like(v, 1, seed=0)
    assert float(r[1].norm()) == pytest.approx(float(v[1].norm()), rel=1e-6)
    steered = np.array([_p_matching_direct(model, p, 1, 2.0 * r[1]) for p in PAIRS])
    assert result.random_shift[1, 1] == pytest.approx(float((steered - base).mean()), abs=1e-6)
    payload = result.to_json()
    assert set(payload) >= {"model", "dataset", "layers", "coefs", "base", "shift", "random_shift", "delta_perplexity", "best"}
    assert np.array(payload["shift"]).shape == (2, 2) and payload["best"]["layer"] in (0, 1)
    best = result.best
    ok = result.base_perplexity + result.delta_perplexity <= 1.5 * result.base_perplexity
    assert best["shift"] == pytest.approx(float(np.where(ok, result.shift, -np.inf).max() if ok.any() else result.shift.max()))
    assert "svg" not in result.plot().to_html()[:0]  # the figure builds


def test_answer_prompts_part_where_the_answers_differ(model):
    prompts = answer_prompts(model, [ContrastPair("w5 w6", "w7 w8", "w7 w9")])
    assert prompts.prompts == [[1, 5, 6, 7]] and prompts.matching == [8] and prompts.not_matching == [9]
    with pytest.raises(InterlayerError, match="one answer is a prefix of the other"):
        answer_prompts(model, [ContrastPair("w5", "w7", "w7 w8")])


def test_gguf_control_vector_round_trip_with_the_gguf_package(model, tmp_path, caplog):
    import gguf

    v = train_vectors(model, PAIRS, [1, 2], method="pca", normalize=False, progress=False)
    v.extra["model_type"] = "llama"
    to_gguf(v, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    assert sorted(t.name for t in reader.tensors) == ["direction.1", "direction.2"]  # llama.cpp: direction.N is block N
    back = from_gguf(tmp_path / "v.gguf", model)
    assert back.layers == [1, 2] and all(torch.equal(back[l], v[l]) for l in v.layers)
    assert back.method == "pca" and back.dataset == "custom"
    with pytest.raises(LayerIndexError, match=r"z\.gguf was not written: layer 0 \(resid_post\.0\) has no llama\.cpp "
                                              r"direction: llama\.cpp never applies a control vector to block 0"):
        to_gguf(SteeringVector({0: torch.randn(32), 1: torch.randn(32)}), tmp_path / "z.gguf")
    assert not (tmp_path / "z.gguf").exists()
    hinted = SteeringVector({1: torch.randn(32)})
    to_gguf(hinted, tmp_path / "h.gguf", hint="gemma3")
    with caplog.at_level(logging.WARNING):
        from_gguf(tmp_path / "h.gguf", model)
    assert "names model 'gemma3'" in caplog.text
    to_gguf(SteeringVector({1: torch.randn(48)}), tmp_path / "w.gguf", hint="llama")
    with pytest.raises(InterlayerError, match="width 48, but .* has d_model=32: it was made for another model"):
        from_gguf(tmp_path / "w.gguf", model)
    with pytest.raises(InterlayerError, match="resid_post"):
        to_gguf(SteeringVector({0: torch.randn(32)}, site="mlp_out"), tmp_path / "m.gguf")


def test_steer_commands(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    make_tiny("llama").save_pretrained(ckpt)
    make_tokenizer(ckpt)
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"question": p.question, "answer_matching_behavior": p.matching,
                                         "answer_not_matching_behavior": p.not_matching}) for p in PAIRS * 3))
    vec = tmp_path / "v.safetensors"
    assert cli.main(["steer", "train", "--model", str(ckpt), "--dataset", str(data), "--layers", "0,1", "--out", str(vec),
                     "--no-progress"]) == 0
    assert SteeringVector.load(vec).layers == [0, 1]
    assert cli.main(["steer", "apply", "--model", str(ckpt), "--vector", str(vec), "--coef", "6", "--max-new-tokens", "4",
                     "--prompt", "w5 w6 w7"]) == 0
    out = capsys.readouterr().out
    assert "--- without steering" in out and "--- add x 6 at resid_post layers [0, 1]" in out
    assert cli.main(["steer", "sweep", "--model", str(ckpt), "--dataset", str(data), "--vector", str(vec), "--layers", "1",
                     "--coefs", "-2,2", "--n", "6", "--perplexity-tokens", "64", "--out", str(tmp_path / "s.json"),
                     "--figures", str(tmp_path / "s.html"), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "s.json").read_text())
    assert payload["layers"] == [1] and payload["coefs"] == [-2.0, 2.0] and len(payload["shift"][0]) == 2
    from interlayer.steering import SteeringSweepResult

    loaded = SteeringSweepResult.load(tmp_path / "s.json")  # what the command wrote opens in Python
    assert loaded.to_json() == payload and (loaded.shift_low <= loaded.shift + 1e-12).all()
    assert (tmp_path / "s.html").read_text().count("<script") >= 1
    capsys.readouterr()
    # layer 0 asked for: refused, nothing written; by default it is left out, with a note
    assert cli.main(["steer", "export", "--vector", str(vec), "--layers", "0,1", "--out", str(tmp_path / "v.gguf")]) == 2
    assert "llama.cpp never applies a control vector to block 0" in capsys.readouterr().err
    assert not (tmp_path / "v.gguf").exists()
    assert cli.main(["steer", "export", "--vector", str(vec), "--layers", "3", "--out", str(tmp_path / "v.gguf")]) == 2
    assert "--layers '3': the vector's layers are [0, 1]" in capsys.readouterr().err
    assert cli.main(["steer", "export", "--vector", str(vec), "--out", str(tmp_path / "v.gguf")]) == 0
    assert "layer 0 is left out of the .gguf" in capsys.readouterr().err
    from interlayer.steering import from_gguf

    assert from_gguf(tmp_path / "v.gguf").layers == [1]
    (tmp_path / "v.gguf").unlink()
    one = dataclasses.replace(SteeringVector.load(vec), directions={1: SteeringVector.load(vec)[1]})
    one.save(tmp_path / "one.safetensors")
    assert cli.main(["steer", "export", "--vector", str(tmp_path / "one.safetensors"), "--out", str(tmp_path / "v.gguf")]) == 0
    assert "tensors direction.1 (direction.N is added to block N's output, resid_post.N)" in capsys.readouterr().out
    assert cli.main(["steer", "export", "--vector", str(tmp_path / "v.gguf"), "--out", str(tmp_path / "back.safetensors")]) == 0
    assert torch.equal(SteeringVector.load(tmp_path / "back.safetensors")[1], SteeringVector.load(vec)[1])
    capsys.readouterr()
    # bad input: one line, exit 2, before the model loads
    assert cli.main(["steer", "train", "--model", "no-such-model", "--dataset", "caa:kindness", "--out", str(vec)]) == 2
    assert "valid behaviours" in capsys.readouterr().err
    assert cli.main(["steer", "sweep", "--model", "no-such-model", "--coefs", "1,x", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "--coefs" in err and "'1,x' must be comma-separated numbers" in err
    assert cli.main(["steer", "apply", "--model", str(ckpt), "--vector", str(vec), "--layers", "-1", "--prompt", "w5"]) == 2
    assert "this vector has no layer 2" in capsys.readouterr().err
