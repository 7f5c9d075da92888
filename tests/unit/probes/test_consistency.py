"""Internal consistency: calibration by hand, the vote, and the protocol end to end."""

import numpy as np
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.probes import calibrate_label_scores as calibrate, consistency_scores, internal_consistency, weighted_vote
from interlayer.probes.consistency import (DATASETS, LABELS, TRIGGER, Example, label_probabilities, load_examples,
                                           reasoning_up_to_answer)
from tests.tiny_models import make_tiny, make_tokenizer


def test_calibration_matches_a_hand_computed_example():
    # 4 paths, 2 layers, K = 2 labels. tau = the 1/2 quantile (median, linear interpolation).
    probs = torch.tensor([
        [[0.9, 0.1], [0.6, 0.4]],
        [[0.2, 0.8], [0.7, 0.3]],
        [[0.5, 0.5], [0.7, 0.3]],
        [[0.6, 0.4], [0.1, 0.9]],
    ])
    # layer 0: label 0 values 0.9,0.2,0.5,0.6 -> median 0.55; label 1: 0.1,0.8,0.5,0.4 -> 0.45
    # layer 1: label 0 values 0.6,0.7,0.7,0.1 -> median 0.65; label 1: 0.4,0.3,0.3,0.9 -> 0.35
    expected = torch.tensor([
        [[1, 0], [0, 1]],
        [[0, 1], [1, 0]],
        [[0, 1], [1, 0]],
        [[1, 0], [0, 1]],
    ], dtype=torch.float64)
    assert torch.equal(calibrate(probs), expected)
    y_hat, ic = consistency_scores(calibrate(probs))
    assert y_hat.tolist() == [1, 0, 0, 1] and ic.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_ties_at_the_quantile_score_one_over_k():
    probs = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]], [[0.5, 0.5]]])  # every value equals tau
    assert torch.equal(calibrate(probs), torch.full((3, 1, 2), 0.5, dtype=torch.float64))
    three = torch.tensor([[[0.2, 0.3, 0.5]], [[0.6, 0.3, 0.1]], [[0.3, 0.4, 0.3]]])
    s = calibrate(three)  # K = 3: tau is the 2/3 quantile of each column
    tau = torch.quantile(three.double(), 2 / 3, dim=0)
    manual = (three.double() > tau).double() + (three.double() == tau).double() / 3
    assert torch.equal(s, manual)


def test_weighted_vote():
    assert weighted_vote([0, 1, 1], [5.0, 1.0, 1.0], 2) == 0
    assert weighted_vote([0, 1, 1], [1.0, 1.0, 1.0], 2) == 1
    assert weighted_vote([0, 1], [1.0, 1.0], 2) == 0  # a tie goes to the lowest label


def test_reasoning_is_cut_at_the_trigger():
    assert reasoning_up_to_answer(" It flips twice. So the answer is yes.\n\nQ: next") == " It flips twice. So the answer is"
    assert reasoning_up_to_answer(" It flips twice.\n\nQ: another") == " It flips twice. So the answer is"


def test_packaged_datasets_load_with_their_labels():
    for name in DATASETS:
        examples = load_examples(name, 5)
        assert len(examples) == 5 and all(e.answer in LABELS[name] for e in examples)
        assert examples[0].prompt.endswith("A:") and TRIGGER in examples[0].prompt
    with pytest.raises(InterlayerError, match="valid datasets: 'coinflip'"):
        load_examples("gsm8k")
    with pytest.raises(InterlayerError, match="at least 2"):
        load_examples("coinflip", 1)


def test_protocol_end_to_end_on_a_tiny_model(tmp_path):
    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    examples = [Example(f"w{5 + i} w{6 + i} w7 A:", "w10" if i % 2 else "w11") for i in range(6)]
    result = internal_consistency(model, examples, ["w10", "w11"], paths=3, max_new_tokens=6, trigger="w12 w13",
                                  progress=False)
    assert result.n == 6 and result.paths == 3 and result.layers == [None, *range(model.n_layers)]
    assert result.ic.shape == (6, 3) and ((0 <= result.ic) & (result.ic <= len(result.layers))).all()
    assert len(result.sc_accuracy) == len(result.ic_accuracy) == 3
    payload = result.to_json()
    assert payload["ic_normalised_mean"] == pytest.approx(result.ic.mean() / len(result.layers))
    # The last hidden state's label probabilities are the model's own, renormalised over the labels.
    text = examples[0].prompt + reasoning_up_to_answer(result.texts[0][1], "w12 w13")
    probs = label_probabilities(model, [text], [10, 11])
    with torch.no_grad():
        logits = model.model(input_ids=model.tokenizer(text, return_tensors="pt").input_ids).logits[0, -1]
    torch.testing.assert_close(probs[0, -1], torch.softmax(logits[[10, 11]], -1), atol=1e-5, rtol=0)
    with pytest.raises(InterlayerError, match="not among the labels"):
        internal_consistency(model, [Example("w5", "w10"), Example("w6", "w30")], ["w10", "w11"], paths=1,
                             progress=False)
    with pytest.raises(InterlayerError, match="share a first token"):
        internal_consistency(model, [Example("w5", "w10"), Example("w6", "w10 w11")], ["w10", "w10 w11"], paths=1,
                             progress=False)


def test_interrupted_sampling_resumes_from_the_journal(tmp_path, monkeypatch):
    import interlayer.probes.consistency as consistency

    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    examples = [Example(f"w{5 + i} w{6 + i} w7 A:", "w10" if i % 2 else "w11") for i in range(4)]
    options = dict(paths=2, max_new_tokens=5, trigger="w12 w13", progress=False)
    straight = internal_consistency(model, examples, ["w10", "w11"], **options)
    journal = str(tmp_path / "paths.jsonl")
    real, calls = consistency._generate, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(consistency, "_generate", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        internal_consistency(model, examples, ["w10", "w11"], journal=journal, **options)
    calls.clear()
    monkeypatch.setattr(consistency, "_generate", lambda *a: (calls.append(1), real(*a))[1])
    resumed = internal_consistency(model, examples, ["w10", "w11"], journal=journal, **options)
    assert len(calls) == 2  # only the two questions not journalled before the interruption
    assert resumed.texts == straight.texts and np.array_equal(resumed.ic, straight.ic)
    # a journal of other settings is refused, naming the setting that differs
    from interlayer.io.journal import JournalError

    with pytest.raises(JournalError, match=r"another run \(seed: 0 there, 1 here\)"):
        internal_consistency(model, examples, ["w10", "w11"], journal=journal, **{**options, "seed": 1})
