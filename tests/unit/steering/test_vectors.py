"""Steering vectors against direct computations: Hugging Face hidden states read by hand,
scikit-learn's PCA and logistic regression, and the purification formulas."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.steering import ContrastPair, SteeringVector, load_pairs, purify, train_vectors
from interlayer.steering.datasets import check_balance, dataset_names
from tests.tiny_models import make_tiny, make_tokenizer

PAIRS = [ContrastPair(f"w{5 + i} w{20 + i} w{40 - i} (", "w10" if i % 2 else "w11", "w11" if i % 2 else "w10")
         for i in range(10)]


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("qwen2"), tokenizer=make_tokenizer(tmp_path / "tok"))


def _hidden(model, text, layer):
    ids = model.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.model(ids, output_hidden_states=True)
    return out.hidden_states[layer + 1][0]  # [seq, d]; layer < n_layers - 1


def test_mean_diff_equals_hidden_states_read_by_hand(model):
    v = train_vectors(model, PAIRS, [0, 1], method="mean_diff", normalize=False, progress=False)
    for layer in (0, 1):
        diffs = [(_hidden(model, p.question + " " + p.matching, layer)[-1]
                  - _hidden(model, p.question + " " + p.not_matching, layer)[-1]) for p in PAIRS]
        torch.testing.assert_close(v[layer], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)
    unit = train_vectors(model, PAIRS, [0, 1], progress=False)
    torch.testing.assert_close(unit[1], v[1] / v[1].norm(), atol=1e-6, rtol=0)
    assert unit.method == "mean_diff" and unit.normalized and unit.n_pairs == 10 and unit.weights_sha256


def test_read_positions_answer_and_mean(model):
    pairs = [ContrastPair(f"w{5 + i} w9", "w30 w31" if i % 2 else "w32", "w32" if i % 2 else "w30 w31")
             for i in range(6)]
    v_mean = train_vectors(model, pairs, [0], read="mean", normalize=False, progress=False)
    diffs = []
    for p in pairs:
        q = len(model.tokenizer(p.question).input_ids)
        a = _hidden(model, p.question + " " + p.matching, 0)[q:].mean(0)
        b = _hidden(model, p.question + " " + p.not_matching, 0)[q:].mean(0)
        diffs.append(a - b)
    torch.testing.assert_close(v_mean[0], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)
    v_answer = train_vectors(model, pairs, [0], read="answer", normalize=False, progress=False)
    diffs = []
    for p in pairs:
        q = len(model.tokenizer(p.question).input_ids)  # the first answer token that holds a letter
        diffs.append(_hidden(model, p.question + " " + p.matching, 0)[q] - _hidden(model, p.question + " " + p.not_matching, 0)[q])
    torch.testing.assert_close(v_answer[0], torch.stack(diffs).mean(0), atol=1e-5, rtol=1e-5)


def test_pca_and_logistic_equal_scikit_learn(model):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    pos = torch.stack([_hidden(model, p.question + " " + p.matching, 1)[-1] for p in PAIRS]).double()
    neg = torch.stack([_hidden(model, p.question + " " + p.not_matching, 1)[-1] for p in PAIRS]).double()
    pc = torch.from_numpy(PCA(n_components=1).fit((pos - neg).numpy()).components_[0])
    pc = pc if float(pc @ (pos - neg).mean(0)) > 0 else -pc
    v = train_vectors(model, PAIRS, [1], method="pca", progress=False)
    torch.testing.assert_close(v[1].double(), pc, atol=1e-4, rtol=0)
    assert float(v[1].double() @ (pos - neg).mean(0)) > 0  # sign aligned with the mean difference
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(torch.cat([pos, neg]).numpy(), np.r_[np.ones(10), np.zeros(10)])
    w = torch.from_numpy(clf.coef_[0])
    v = train_vectors(model, PAIRS, [1], method="logistic", progress=False)
    torch.testing.assert_close(v[1].double(), w / w.norm(), atol=1e-3, rtol=0)


def test_purify_qr_is_orthogonal_and_combined_follows_its_formula():
    torch.manual_seed(0)
    unit = lambda: (lambda v: v / v.norm())(torch.randn(16))  # noqa: E731
    make = lambda: SteeringVector({0: unit(), 3: unit()})  # noqa: E731  (unit-norm: normalized)
    openness, consc, extra = make(), make(), make()
    pure = purify(openness, [consc, extra], mode="qr")
    for layer in (0, 3):
        assert abs(float(pure[layer] @ consc[layer])) < 1e-5 and abs(float(pure[layer] @ extra[layer])) < 1e-5
        assert float(pure[layer] @ openness[layer]) > 0 and abs(float(pure[layer].norm()) - 1) < 1e-5
    combined = purify(openness, [consc], mode="combined")
    o, c = openness[3].double(), consc[3].double()
    o_hat, c_hat = o / o.norm(), c / c.norm()
    expected = o_hat + (o_hat - c_hat) / (o_hat - c_hat).norm()
    torch.testing.assert_close(combined[3].double(), expected / expected.norm(), atol=1e-6, rtol=0)
    assert combined.extra["purified"]["mode"] == "combined"
    with pytest.raises(InterlayerError, match="valid choices: 'qr', 'combined'"):
        purify(openness, [consc], mode="gram")


def test_save_and_load_keep_directions_and_provenance(model, tmp_path):
    v = train_vectors(model, PAIRS, "all", method="pca", progress=False)
    v.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(tmp_path / "v.safetensors", model)
    assert back.layers == [0, 1, 2] and back.method == "pca" and back.model == model.name
    assert back.weights_sha256 == model.weights_sha256() and back.dataset == "custom" and back.n_pairs == 10
    assert all(torch.equal(v[l], back[l]) for l in v.layers)
    other = interlayer.load_model(make_tiny("gpt2"))  # d_model 32 too, but 3 layers: fits
    wide = SteeringVector({0: torch.randn(48)})
    with pytest.raises(InterlayerError, match="d_model=48, but .* has d_model=32"):
        wide.check_model(other)
    deep = SteeringVector({7: torch.randn(32)})
    with pytest.raises(interlayer.LayerIndexError, match="valid layers are 0..2"):
        deep.check_model(model)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(InterlayerError, match="not a safetensors steering vector"):
        SteeringVector.load(tmp_path / "junk.safetensors")


def test_packaged_datasets_load_balanced_and_split_apart():
    for name in dataset_names():
        train, test = load_pairs(name, "generate"), load_pairs(name, "test")
        check_balance(train)
        assert len(train) >= 100 and len(test) >= 40
        assert not {(p.question, p.matching) for p in train} & {(p.question, p.matching) for p in test}, name
    power = load_pairs("power-seeking", "generate")
    assert all(p.matching.strip().startswith("(") for p in power)


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(InterlayerError, match="valid behaviours: 'coordinate-other-ais'"):
        load_pairs("caa:kindness")
    with pytest.raises(InterlayerError, match="valid traits"):
        load_pairs("persona:grumpiness")
    (tmp_path / "missing.jsonl").write_text(json.dumps({"question": "q", "answer_matching_behavior": "(A)"}) + "\n")
    with pytest.raises(InterlayerError, match=r"missing.jsonl:1 lacks 'answer_not_matching_behavior'"):
        load_pairs(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(InterlayerError, match="holds no contrast pairs"):
        load_pairs(str(tmp_path / "empty.json"))
    same = [ContrastPair(f"q{i}", "(A)", "(B)") for i in range(10)]
    with pytest.raises(InterlayerError, match="unbalanced pairs: 10 of 10 match with the same answer '\\(A\\)'"):
        check_balance(same)


def test_chat_is_a_chat_mode_and_booleans_are_deprecated(model):
    plain = train_vectors(model, PAIRS, [1], chat="no", progress=False)
    assert plain.chat is False and plain.site_kind == plain.site == "resid_post"
    with pytest.warns(DeprecationWarning, match="chat='no'"):
        old = train_vectors(model, PAIRS, [1], chat=False, progress=False)
    assert torch.equal(old[1], plain[1]) and old.chat is False
    assert train_vectors(model, PAIRS, [1], chat="auto", progress=False).chat is False  # no chat template
    with pytest.raises(InterlayerError, match="no chat template"):
        train_vectors(model, PAIRS, [1], chat="yes", progress=False)
    with pytest.raises(InterlayerError, match="unknown chat setting 'maybe'"):
        train_vectors(model, PAIRS, [1], chat="maybe", progress=False)
