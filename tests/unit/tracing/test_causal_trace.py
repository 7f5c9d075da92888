"""Causal tracing (interlayer.tracing) against a direct plain-hook implementation of
ROME's procedure on a tiny Llama; the facts file's errors name the file and the line."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import interlayer
from interlayer.model.adapter import ModelAdapter
from interlayer.store.patching import EmbeddingNoise
from interlayer.tracing import Fact, causal_trace, load_facts, subject_positions
from interlayer.tracing.causal_trace import TOKEN_GROUPS, window_layers
from tests.tiny_models import make_tiny, make_tokenizer

FACT = Fact("w5 w9 w14 w22 w31 w8", "w9 w14", "w17")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = make_tiny("llama")
    return hf, ModelAdapter(hf, make_tokenizer(tmp_path_factory.mktemp("tok")))


def _direct(hf, ids, target, noise, subject, sub=None, position=None, values=None):
    """P(target) at the last position, noise added to block 0's input at the subject and,
    optionally, the outputs of ``sub`` modules (layer -> module) replaced at ``position``."""
    handles = []

    def pre(module, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        x[:, subject] += noise
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})
    handles.append(hf.model.layers[0].register_forward_pre_hook(pre, with_kwargs=True))
    for layer, module in (sub or {}).items():
        def post(m, a, out, layer=layer):
            x = (out[0] if isinstance(out, tuple) else out).clone()
            x[:, position] = values[layer]
            return (x, *out[1:]) if isinstance(out, tuple) else x
        handles.append(module.register_forward_hook(post))
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids] * noise.shape[0])).logits[:, -1]
    finally:
        for h in handles:
            h.remove()
    return float(torch.softmax(logits.float(), -1)[:, target].mean())


def test_subject_positions_cover_the_subject_tokens(tiny):
    _, model = tiny
    ids, subject, target = subject_positions(model, FACT)
    assert ids == [1, 5, 9, 14, 22, 31, 8] and subject == [2, 3] and target == 17


def test_mlp_window_tracing_equals_plain_hooks(tiny):
    hf, model = tiny
    trace = causal_trace(model, [FACT], kinds=("resid", "mlp"), window=2, std=1.5, samples=3, seed=1,
                         known_only=False, progress=False)
    fact = trace.facts[0]
    ids, subject, target = subject_positions(model, FACT)
    noise = EmbeddingNoise(tuple(subject), 1.5, 3, 1).noise(model.d_model)
    clean_mlp = {}
    handles = [b.mlp.register_forward_hook(lambda m, a, o, l=l: clean_mlp.__setitem__(l, o[0].clone()))
               for l, b in enumerate(hf.model.layers)]
    with torch.no_grad():
        clean_logits = hf(torch.tensor([ids])).logits[0, -1]
    for h in handles:
        h.remove()
    assert fact.clean == pytest.approx(float(torch.softmax(clean_logits, -1)[target]), rel=1e-4)
    assert fact.corrupted == pytest.approx(_direct(hf, ids, target, noise, subject), rel=1e-4)
    for l in range(model.n_layers):
        window = window_layers(l, model.n_layers, 2)
        for p in range(len(ids)):
            want = _direct(hf, ids, target, noise, subject, {j: hf.model.layers[j].mlp for j in window}, p,
                           {j: clean_mlp[j][p] for j in window})
            assert fact.scores["mlp"][l, p] == pytest.approx(want, rel=1e-4, abs=1e-7), (l, p)
    effects = fact.effects("mlp")
    assert effects.shape == (len(TOKEN_GROUPS), model.n_layers)
    assert effects[TOKEN_GROUPS.index("last subject token")] == pytest.approx(fact.scores["mlp"][:, 3] - fact.corrupted)
    frame = trace.to_frame()
    assert set(frame.kind) == {"resid", "mlp"} and len(frame) == 2 * len(TOKEN_GROUPS) * model.n_layers
    again = type(trace).from_json(json.loads(json.dumps(trace.to_json())))
    assert np.allclose(again.facts[0].scores["mlp"], fact.scores["mlp"])
    band = trace.band("resid")
    assert band["first"] <= band["peak_layer"] <= band["last"]


def test_key_positions_restore_the_same_cells_and_leave_the_rest_out(tiny):
    _, model = tiny
    options = dict(kinds=("resid", "mlp"), window=2, std=1.5, samples=3, seed=1, known_only=False, progress=False)
    full = causal_trace(model, [FACT], **options).facts[0]
    trace = causal_trace(model, [FACT], positions="key", **options)
    key = trace.facts[0]
    ids, subject, _ = subject_positions(model, FACT)
    kept = [2, 3, len(ids) - 1]  # first and last subject token, last token
    for kind in ("resid", "mlp"):
        assert key.scores[kind][:, kept] == pytest.approx(full.scores[kind][:, kept], rel=1e-5, abs=1e-8)
        left = [p for p in range(len(ids)) if p not in kept]
        assert np.isnan(key.scores[kind][:, left]).all()
        effects = key.effects(kind)  # the groups it restored are the full trace's, the others NaN
        for group in ("first subject token", "last subject token", "last token"):
            g = TOKEN_GROUPS.index(group)
            assert effects[g] == pytest.approx(full.effects(kind)[g], rel=1e-5, abs=1e-8)
        assert np.isnan(effects[TOKEN_GROUPS.index("further tokens")]).all()
    again = type(trace).from_json(json.loads(json.dumps(trace.to_json(), allow_nan=False)))  # NaN as null
    assert again.positions == "key" and np.isnan(again.facts[0].scores["resid"][:, 0]).all()
    assert trace.band("resid")["peak_layer"] in range(model.n_layers)
    with pytest.raises(interlayer.InterlayerError, match="unknown positions 'some'; valid choices: 'all', 'key'"):
        causal_trace(model, [FACT], positions="some", std=1.0, progress=False)


def test_known_only_keeps_only_what_the_model_predicts(tiny):
    _, model = tiny
    trace = causal_trace(model, [FACT], kinds=("resid",), std=1.0, samples=2, known_only=True, progress=False)
    ids, _, target = subject_positions(model, FACT)
    top = int(model.forward(torch.tensor([ids]))[0, -1].argmax())
    assert trace.scanned == 1 and len(trace.facts) == (1 if top == target else 0)


@pytest.mark.parametrize("line, says", [
    ('{"prompt": "a b", "subject": "b"}', "facts.jsonl:3: missing field 'target'"),
    ('{"prompt": "a b", "subject": "c", "target": "x"}', "facts.jsonl:3: the subject 'c' is not in the prompt"),
    ('{"prompt": "a b", "subject": "b", "target": 4}', "facts.jsonl:3: field 'target' must be a non-empty string"),
    ("not json", "facts.jsonl:3 is not valid JSON"),
    ('["a"]', "facts.jsonl:3: expected a JSON object"),
])
def test_a_bad_facts_line_is_named(tmp_path, line, says):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"prompt": "Paris is in", "subject": "Paris", "target": "France"}\n\n' + line + "\n")
    with pytest.raises(interlayer.InterlayerError, match=re.escape(says)):
        load_facts(path)
    assert load_facts(path, n=1) == [Fact("Paris is in", "Paris", "France")]
