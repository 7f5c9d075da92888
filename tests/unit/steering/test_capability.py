"""Capability checks against direct computations: multiple-choice accuracy, the perplexity
of generated text, the stability formula, and the calibration's choice."""

from __future__ import annotations

import math

import pytest
import torch

import interlayer
from interlayer.steering import ContrastPair, SteeringVector, calibrate_strength, choice_accuracy, stability, train_vectors
from interlayer.steering.capability import fluency, load_swag, text_perplexity
from tests.tiny_models import make_tiny, make_tokenizer

ITEMS = [{"startphrase": f"w{5 + i} w{6 + i}", "choices": [f"w{20 + i} w{21 + i}", f"w{30 + i}", "w40 w41 w42", f"w{50 - i}"],
          "answer": i % 4} for i in range(8)]


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))


def test_choice_accuracy_equals_scoring_each_ending_by_hand(model):
    correct = 0
    for item in ITEMS:
        start = model.tokenizer(item["startphrase"]).input_ids
        scores = []
        for choice in item["choices"]:
            ids = model.tokenizer(item["startphrase"] + " " + choice).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(model.model(torch.tensor([ids])).logits[0].double(), -1)
            k = len(start)
            scores.append(float(logp[torch.arange(k - 1, len(ids) - 1), torch.tensor(ids[k:])].mean()))
        correct += int(max(range(4), key=lambda c: scores[c]) == item["answer"])
    assert choice_accuracy(model, ITEMS) == pytest.approx(correct / len(ITEMS))
    assert len(load_swag(10)) == 10 and set(load_swag(1)[0]) >= {"startphrase", "choices", "answer"}


def test_text_perplexity_and_fluency(model):
    prompts, texts = ["w5 w6", "w7"], [" w8 w9 w10", " w11"]
    total, count = 0.0, 0
    for prompt, text in zip(prompts, texts):
        start = model.tokenizer(prompt).input_ids
        ids = model.tokenizer(prompt + text).input_ids
        with torch.no_grad():
            logp = torch.log_softmax(model.model(torch.tensor([ids])).logits[0].double(), -1)
        k = len(start)
        total -= float(logp[torch.arange(k - 1, len(ids) - 1), torch.tensor(ids[k:])].sum())
        count += len(ids) - k
    assert text_perplexity(model, texts, prompts) == pytest.approx(math.exp(total / count), rel=1e-6)
    v = SteeringVector({1: torch.randn(32)})
    same = fluency(model, v, 0.0, prompts=["w5 w6", "w9"], max_new_tokens=4)
    assert same["fluency"] == pytest.approx(1.0) and same["ppl_steered"] == pytest.approx(same["ppl_plain"])


def test_stability_follows_the_papers_formula():
    out = stability([2.0, -0.1], [10.0, 1.0])
    normed = torch.tensor([0.2, -0.1], dtype=torch.float64)
    consistency = 1 / (1 + float(normed.var(unbiased=False)))
    disruption = 1 / (1 + float(normed.abs().mean()))
    assert out["consistency"] == pytest.approx(consistency) and out["disruption"] == pytest.approx(disruption)
    assert out["stability"] == pytest.approx(consistency * disruption)
    assert stability([0.0, 0.0], [1.0, 1.0])["stability"] == 1.0


def test_calibration_picks_the_largest_admissible_shift(model):
    pairs = [ContrastPair(f"w{5 + i} w{20 + i}", "w10 w12" if i % 2 else "w11 w13", "w11 w13" if i % 2 else "w10 w12")
             for i in range(10)]
    v = train_vectors(model, pairs, [1], progress=False)
    result = calibrate_strength(model, v, pairs, 1, strengths=(-4, -1, 1, 4), bound=0.5, n=None)
    frame = result.to_frame()
    admissible = frame[frame.fluency >= 0.5]
    assert result.chosen == float(admissible.loc[admissible["shift"].idxmax(), "strength"])
    assert len(frame) >= 4 and set([-4.0, -1.0, 1.0, 4.0]) <= set(frame.strength)
