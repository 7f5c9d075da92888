"""Linear probes: a separable dataset is learnt, its shuffled control is at chance."""

import numpy as np
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.probes.linear import probe_features, probe_layers
from tests.tiny_models import make_tiny, make_tokenizer


def test_separable_data_is_learnt_and_the_control_is_at_chance():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 32
    labels = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(d, generator=g)
    signal = torch.randn(n, d, generator=g) + 4 * (2 * labels[:, None] - 1) * direction / direction.norm()
    noise = torch.randn(n, d, generator=g)
    result = probe_features({"signal": signal, "noise": noise}, labels.tolist(), folds=5)
    frame = result.to_frame().set_index("site")
    assert frame.loc["signal", "accuracy"] > 0.99
    assert abs(frame.loc["signal", "control"] - 0.5) < 0.1
    assert frame.loc["signal", "selectivity"] > 0.4
    assert abs(frame.loc["noise", "accuracy"] - 0.5) < 0.1
    assert frame.loc["signal", "ci_low"] <= frame.loc["signal", "accuracy"] <= frame.loc["signal", "ci_high"]
    assert result.chance == pytest.approx(max(labels.float().mean().item(), 1 - labels.float().mean().item()))
    assert len(result.plot().data) == 4


def test_bad_labels():
    x = torch.randn(10, 4)
    with pytest.raises(InterlayerError, match="no labels"):
        probe_features({"a": x}, [])
    with pytest.raises(InterlayerError, match="no labels"):
        probe_features({"a": x}, [None] * 10)
    with pytest.raises(InterlayerError, match="at least 2 classes"):
        probe_features({"a": x}, [1] * 10)
    with pytest.raises(InterlayerError, match="rarest class"):
        probe_features({"a": x}, [0] * 8 + [1] * 2, folds=5)


def test_probe_layers_reads_the_store(tmp_path):
    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    rng = np.random.default_rng(0)
    # Label = whether the text contains w50; the model's layers carry that token's identity.
    texts, labels = [], []
    for i in range(80):
        words = [f"w{int(w)}" for w in rng.integers(4, 40, 6)]
        if i % 2:
            words[int(rng.integers(0, 6))] = "w50"
        texts.append(" ".join(words))
        labels.append(i % 2)
    result = probe_layers(model, texts, labels, select="mean", folds=4, progress=False)
    assert result.sites == ["resid_post.0", "resid_post.1", "resid_post.2"]
    # The same numbers as probing vectors pooled by hand from per-text forward passes.
    pooled = {s: [] for s in result.sites}
    for text in texts:
        ids = model.tokenizer(text, return_tensors="pt").input_ids
        _, acts = model.run(ids, read=result.sites, logits=False)
        for s in result.sites:
            pooled[s].append(acts[s][0].mean(0))
    direct = probe_features({s: torch.stack(v) for s, v in pooled.items()}, labels, folds=4)
    assert np.allclose(result.accuracy, direct.accuracy) and np.allclose(result.control, direct.control)
    assert all(sel > 0 for sel in result.selectivity)  # the token's presence is decodable, beyond the control
    with pytest.raises(InterlayerError, match="2 labels"):
        probe_layers(model, texts, labels[:2], progress=False)
