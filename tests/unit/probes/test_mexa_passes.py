"""MEXA's shared store passes: several languages in one pass (sorted by length together)
give the reference's scores and pad less than one pass per language."""

import importlib

import pytest

import interlayer
from interlayer.probes import mexa
from interlayer.probes.mexa import language_passes, sentence_embeddings
from interlayer.probes.reference import mexa_reference_languages
from tests.tiny_models import make_tiny, make_tokenizer

mexa_module = importlib.import_module("interlayer.probes.mexa")  # the package's ``mexa`` is the function

ENG = ["w5 w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15", "w16 w17 w18 w19 w20", "w21 w22", "w23 w24 w25 w26"]
FRA = ["w5 w6 w30 w8", "w12 w31 w32 w33 w34 w35", "w13 w36", "w16 w37 w38", "w21 w39 w40 w41 w42 w43 w44", "w23"]
DEU = ["w5 w50", "w12 w51 w52 w53 w54 w55 w56 w57 w58", "w13", "w16 w59 w60 w61 w62", "w21 w63 w64", "w23 w65"]


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("gemma3"), tokenizer=make_tokenizer(tmp_path / "tok"))


@pytest.fixture
def parallel(tmp_path):
    d = tmp_path / "par"
    d.mkdir()
    for lang, lines in (("eng_Latn", ENG), ("fra_Latn", FRA), ("deu_Latn", DEU)):
        (d / f"{lang}.txt").write_text("\n".join(lines) + "\n")
    return d


def test_language_passes_group_whole_languages():
    assert language_passes(["a", "b", "c", "d", "e"], 100, 250) == [["a", "b"], ["c", "d"], ["e"]]
    assert language_passes(["a", "b"], 100, 50) == [["a"], ["b"]]  # a language over the budget: a pass of its own
    assert language_passes(["a", "b", "c"], 100, 1024) == [["a", "b", "c"]]


@pytest.mark.parametrize("budget", [6, 12, 1024])
def test_shared_passes_give_the_reference_scores(model, parallel, monkeypatch, budget):
    monkeypatch.setattr(mexa_module, "PASS_SENTENCES", budget)  # one, two or three languages per pass
    data = {"eng_Latn": ENG, "fra_Latn": FRA, "deu_Latn": DEU}
    expected = mexa_reference_languages(model, data, ["fra_Latn", "deu_Latn"], "weighted")
    result = mexa(model, ["fra_Latn", "deu_Latn"], n=6, data_dir=parallel, batch_size=4, progress=False)
    assert list(result.scores) == ["fra_Latn", "deu_Latn"]
    assert result.scores == expected


def test_shared_pass_pads_less_than_one_pass_per_language(model, parallel):
    padded = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: padded.append(kwargs["input_ids"].numel()), with_kwargs=True)
    try:
        mexa(model, ["fra_Latn", "deu_Latn"], n=6, data_dir=parallel, batch_size=4, progress=False)
        shared = sum(padded)
        padded.clear()
        for lines in (ENG, FRA, DEU):
            sentence_embeddings(model, lines, "weighted", batch_size=4)
        separate = sum(padded)
    finally:
        handle.remove()
    real = sum(len(model.tokenizer(s).input_ids) for s in ENG + FRA + DEU)
    assert real <= shared < separate


def test_pivot_alone_aligns_with_itself(model, parallel):
    result = mexa(model, ["eng_Latn"], n=6, data_dir=parallel, progress=False)
    assert list(result.scores) == ["eng_Latn"] and all(score == 1.0 for score in result.scores["eng_Latn"])
