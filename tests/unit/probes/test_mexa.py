"""MEXA against the plain per-sentence reference of cisnlp/Mexa."""

import json

import numpy as np
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.probes import MexaResult, mexa, mutual_nearest_hits
from interlayer.probes.mexa import available_languages, load_parallel, packaged_data_dir, sentence_embeddings
from interlayer.probes.reference import (mexa_reference, mexa_reference_languages, mexa_rule_reference,
                                        reference_embeddings)
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("gemma3"), tokenizer=make_tokenizer(tmp_path / "tok"))


@pytest.fixture
def parallel(tmp_path):
    d = tmp_path / "par"
    d.mkdir()
    # Sentences of very different lengths, so batches pad at both ends.
    eng = ["w5 w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15", "w16 w17 w18 w19 w20", "w21 w22", "w23 w24 w25 w26"]
    fra = ["w5 w6 w30 w8", "w12 w31 w32 w33 w34 w35", "w13 w36", "w16 w37 w38", "w21 w39 w40 w41 w42 w43 w44", "w23"]
    (d / "eng_Latn.txt").write_text("\n".join(eng) + "\n")
    (d / "fra_Latn.devtest").write_text("\n".join(fra) + "\n")
    return d, eng, fra


def test_rule_counts_ties_as_misses():
    s = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.5, 0.5], [0.1, 0.2, 0.7]], dtype=torch.float64)
    assert mutual_nearest_hits(s).tolist() == [True, False, True]  # row 1 ties 0.5 with 0.5
    s2 = torch.tensor([[0.9, 0.1], [0.9, 0.95]], dtype=torch.float64)  # column 0 ties 0.9
    assert mutual_nearest_hits(s2).tolist() == [False, True]
    for matrix in (s, s2, torch.rand(7, 7, dtype=torch.float64)):
        assert mutual_nearest_hits(matrix).double().mean().item() == mexa_rule_reference(matrix.numpy())


@pytest.mark.parametrize("pooling", ["weighted", "last"])
def test_batched_embeddings_equal_per_sentence_reference(model, parallel, pooling):
    _, eng, _ = parallel
    for batch_size, side in ((1, "right"), (4, "right"), (4, "left")):
        emb = sentence_embeddings(model, eng, pooling, batch_size=batch_size, padding_side=side)
        assert emb.shape == (model.n_layers + 1, len(eng), model.d_model)
        for i, sentence in enumerate(eng):
            ref = reference_embeddings(model, sentence, pooling)
            for layer, expected in enumerate(ref):
                np.testing.assert_allclose(emb[layer, i].numpy(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["weighted", "last"])
def test_scores_equal_the_reference(model, parallel, pooling):
    d, eng, fra = parallel
    result = mexa(model, ["fra_Latn"], n=6, pooling=pooling, data_dir=d, batch_size=4, progress=False)
    assert result.scores["fra_Latn"] == mexa_reference(model, eng, fra, pooling)
    payload = result.to_json()
    assert set(payload) == {"model", "pooling", "n", "pivot", "layers", "hidden_index", "languages", "scores", "mean",
                            "max", "ci"}
    assert payload["layers"] == [None, *range(model.n_layers)]  # block index; hidden state 0 is the embeddings
    assert payload["hidden_index"] == list(range(model.n_layers + 1))
    assert len(payload["scores"]["fra_Latn"]) == model.n_layers + 1
    ci = payload["ci"]["fra_Latn"]
    assert all(0 <= lo <= s <= hi <= 1 for lo, s, hi in zip(ci["low"], payload["scores"]["fra_Latn"], ci["high"]))
    assert payload["mean"]["fra_Latn"] == pytest.approx(np.mean(payload["scores"]["fra_Latn"]))
    assert payload["max"]["fra_Latn"] == max(payload["scores"]["fra_Latn"])
    assert result.plot().data[0].z is not None and len(result.plot_summary().data) == 2


def test_reference_embeds_each_language_once(model, parallel):
    d, eng, fra = parallel
    rev = list(reversed(fra))
    (d / "rev_Latn.txt").write_text("\n".join(rev) + "\n")
    calls = []
    handle = model.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        scores = mexa_reference_languages(model, {"eng_Latn": eng, "fra_Latn": fra, "rev_Latn": rev},
                                          ["fra_Latn", "rev_Latn"], "weighted")
        assert len(calls) == 3 * len(eng)  # the pivot once, not once per language (which would be 4 x 6)
        calls.clear()
        per_pair = {lang: mexa_reference(model, eng, data, "weighted") for lang, data in (("fra_Latn", fra),
                                                                                           ("rev_Latn", rev))}
        assert len(calls) == 4 * len(eng)
    finally:
        handle.remove()
    assert scores == per_pair
    fast = mexa(model, ["fra_Latn", "rev_Latn"], n=6, data_dir=d, batch_size=4, progress=False)
    assert fast.scores == scores


def test_identical_languages_align_perfectly(model, parallel, tmp_path):
    d, eng, _ = parallel
    (d / "cpy_Latn.txt").write_text("\n".join(eng) + "\n")
    result = mexa(model, ["cpy_Latn"], n=6, data_dir=d, progress=False)
    assert all(score == 1.0 for score in result.scores["cpy_Latn"])


def test_bad_input(model, parallel):
    d, _, _ = parallel
    (d / "deu_Latn.txt").write_text("w5\nw6\n")
    with pytest.raises(InterlayerError, match="different lengths.*eng_Latn: 6.*deu_Latn: 2"):
        load_parallel(["eng_Latn", "deu_Latn"], 2, d)
    with pytest.raises(InterlayerError, match="available languages: 'deu_Latn', 'eng_Latn', 'fra_Latn'"):
        mexa(model, ["spa_Latn"], n=2, data_dir=d, progress=False)
    with pytest.raises(InterlayerError, match="at least 2"):
        mexa(model, ["fra_Latn"], n=1, data_dir=d, progress=False)
    with pytest.raises(InterlayerError, match="fewer than n=50"):
        load_parallel(["eng_Latn", "fra_Latn"], 50, d)
    with pytest.raises(InterlayerError, match="'weighted', 'last'"):
        mexa(model, ["fra_Latn"], n=2, pooling="max", data_dir=d, progress=False)


def test_packaged_flores_subset():
    langs = available_languages()
    assert len(langs) == 34 and "eng_Latn" in langs and "zho_Hans" in langs
    data = load_parallel(langs, 100)
    assert all(len(v) == 100 for v in data.values())
    assert (packaged_data_dir() / "LICENSE-CC-BY-SA.txt").is_file() and (packaged_data_dir() / "SOURCE.txt").is_file()


def test_mexa_cli_schema(tmp_path, parallel, capsys):
    from interlayer.cli import dispatch as cli

    d, _, _ = parallel
    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    out = tmp_path / "m.json"
    assert cli.main(["probes", "mexa", "--model", str(tmp_path / "ckpt"), "--langs", "all", "--n", "6", "--pooling",
                     "last", "--dataset", str(d), "--out", str(out), "--no-progress"]) == 0
    payload = json.loads(out.read_text())
    assert payload["pooling"] == "last" and payload["n"] == 6 and payload["pivot"] == "eng_Latn"
    assert list(payload["scores"]) == ["fra_Latn"] and payload["layers"] == [None, 0, 1, 2]
    assert MexaResult.load(out).to_json() == payload  # what the command wrote opens in Python
    assert cli.main(["probes", "mexa", "--model", str(tmp_path / "ckpt"), "--langs", "xxx_Latn", "--dataset", str(d)]) == 2
    assert "available languages" in capsys.readouterr().err
