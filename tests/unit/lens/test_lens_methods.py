"""Logit lens, latent-language analysis and saturation on tiny models, against
direct computations."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.lens import latent_language, logit_lens, saturation
from interlayer.lens.latent import LANGUAGE_NAMES, build_prompt, check_task, load_cloze, load_words
from interlayer.lens.prefixes import PrefixIndex, _byte_to_unicode
from interlayer.lens.saturation import exit_layers
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("gemma2"), tokenizer=make_tokenizer(tmp_path / "tok"))


def direct_log_probs(model, text):
    ids = model.tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.model(input_ids=ids, output_hidden_states=True)
    hs = list(out.hidden_states[1:-1])
    # HF's last hidden state is already normed; rebuild resid_post of the last layer from the model's logits path.
    _, acts = model.run(ids, read=[f"resid_post.{model.n_layers - 1}"])
    hs.append(acts[f"resid_post.{model.n_layers - 1}"])
    return ids, [torch.log_softmax(model.unembed_resid(h[0]).float(), -1) for h in hs], out.logits[0]


def test_logit_lens_equals_direct_decoding_and_model_logits(model):
    result = logit_lens(model, ["w5 w6 w7", "w8 w9"], targets=["w9", "w10"], top_k=3)
    ids, logps, logits = direct_log_probs(model, "w5 w6 w7")
    rows = torch.tensor((result.rows.prompt == 0).to_numpy())
    for layer, logp in enumerate(logps):
        got = result.top_ids[layer, rows]
        assert torch.equal(got, torch.topk(logp, 3, -1).indices)
        torch.testing.assert_close(result.target_probs[layer, rows, 0], logp[:, 9].exp(), atol=1e-6, rtol=0)
        assert torch.equal(result.target_ranks[layer, rows, 1], (logp > logp[:, 10:11]).sum(-1))
    assert torch.equal(result.top_ids[-1, rows, 0], logits.argmax(-1))
    last = logit_lens(model, ["w5 w6 w7", "w8 w9"], positions="last")
    assert last.rows.position.tolist() == [3, 2] and last.top_ids.shape[1] == 2
    assert torch.equal(last.top_ids[:, 0, 0], result.top_ids[:, 3, 0])
    frame = result.to_frame()
    assert {"p[w9]", "rank[w10]", "kl_to_final"} <= set(frame.columns)
    assert len(result.plot_curves().data) == 4 and result.plot(1).data[0].z.shape == (3, 3)
    with pytest.raises(InterlayerError, match="'all', 'last'"):
        logit_lens(model, "w5", positions="first")


def test_prefix_sets_sentencepiece_style():
    class Tok:
        def get_vocab(self):
            return {"▁fl": 1, "fl": 2, "flow": 3, "▁flower": 4, "f": 5, "ower": 6, "<0xE8>": 7, "花": 8, "x": 9}

    index = PrefixIndex(Tok())
    assert index.style == "sentencepiece"
    assert index.ids("flower") == {1, 2, 3, 4, 5}  # every prefix, with and without ▁; never "ower" or "x"
    assert index.ids("花") == {7, 8}  # the character and the byte token of its first UTF-8 byte (0xE8)
    assert index.ids("zzz") == set()


def test_prefix_sets_byte_level_style():
    table = _byte_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("a")] == "a"
    hua = "花".encode()  # three bytes
    first = table[hua[0]]
    vocab = {"Ġf": 1, "fl": 2, "Ġflower": 3, first: 4, "".join(table[b] for b in hua): 5, "Ġ" + first: 6, "lower": 7}

    class Tok:
        def get_vocab(self):
            return vocab

    index = PrefixIndex(Tok())
    assert index.style == "byte_level"
    assert index.ids("flower") == {1, 2, 3}
    assert index.ids("花") == {4, 5, 6}


def test_prefix_sets_on_a_real_tokenizer(model):
    index = PrefixIndex(model.tokenizer)
    assert index.style == "plain"
    assert index.ids("w12") == {model.tokenizer.convert_tokens_to_ids("w12")}


def tiny_words():
    # Words of the tiny vocabulary in three made-up "languages" whose prefix sets are
    # disjoint ("w1", "w2", "w3" are not tokens: ids 1-3 are special).
    return pd.DataFrame({"en": [f"w{i}" for i in range(10, 20)], "fr": [f"w{i}" for i in range(20, 30)],
                         "zh": [f"w{i}" for i in range(30, 40)]})


def test_latent_probabilities_equal_a_direct_computation(model, monkeypatch):
    import interlayer.lens.latent as latent

    monkeypatch.setitem(latent.LANGUAGE_NAMES, "en", "w60")
    monkeypatch.setitem(latent.LANGUAGE_NAMES, "fr", "w61")
    monkeypatch.setitem(latent.LANGUAGE_NAMES, "zh", "w62")
    result = latent_language(model, src="fr", tgt="zh", words=tiny_words(), shots=2, progress=False)
    assert result.n_words == 10 and result.n_missing == 0 and result.n_overlap == 0
    for i in (0, 5, 9):
        row = result.words.iloc[i]
        ids = model.tokenizer(row.prompt, return_tensors="pt").input_ids
        _, acts = model.run(ids, read=[f"resid_post.{l}" for l in range(model.n_layers)])
        for layer in range(model.n_layers):
            logp = torch.log_softmax(model.unembed_resid(acts[f"resid_post.{layer}"][0, -1]).float(), -1)
            vocab = model.tokenizer.get_vocab()
            logp = logp.detach()
            for word, got in ((row.zh, result.p_target), (row.en, result.p_latent["en"]), (row.fr, result.p_source)):
                assert got[i, layer] == pytest.approx(float(logp[vocab[word]].exp()), abs=1e-6)
            entropy = float(-(logp.exp() * logp).sum())
            assert result.entropy[i, layer] == pytest.approx(entropy, abs=1e-5)
    payload = result.to_json()
    assert set(payload) == {"model", "lens", "task", "src", "tgt", "n_words", "layers", "p_target", "p_latent",
                            "p_source", "entropy", "ci", "n_missing", "n_overlap", "skipped", "per_word"}
    assert (np.array(payload["ci"]["p_target"]["low"]) >= 0).all() and (np.array(payload["ci"]["p_target"]["high"]) <= 1).all()
    assert len(payload["p_target"]) == len(payload["layers"]) == model.n_layers
    assert payload["p_target"] == pytest.approx(result.p_target.mean(0).tolist())
    low, high = np.array(payload["ci"]["p_target"]["low"]), np.array(payload["ci"]["p_target"]["high"])
    assert (low <= np.array(payload["p_target"]) + 1e-12).all() and (high >= np.array(payload["p_target"]) - 1e-12).all()


def test_missing_and_overlapping_words_are_counted(model):
    words = tiny_words()
    words.loc[0, "zh"] = "unknownword"  # not in the vocabulary: skipped
    words.loc[1, "zh"] = words.loc[1, "en"]  # same token as English: overlap, dropped
    result = latent_language(model, src="fr", tgt="zh", words=words, shots=2, progress=False)
    assert (result.n_missing, result.n_overlap, result.n_words) == (1, 1, 8)
    words.loc[2, "zh"], words.loc[2, "en"] = "w4", "w40"  # "w4" spells a prefix of "w40": the sets overlap
    result = latent_language(model, src="fr", tgt="zh", words=words, shots=2, progress=False)
    assert result.n_overlap == 2


def test_bad_task_or_language_lists_valid_ones(model):
    with pytest.raises(InterlayerError, match="valid tasks: 'translation', 'repetition', 'cloze'"):
        latent_language(model, task="summarise")
    with pytest.raises(InterlayerError, match="valid languages: .*'fr'"):
        latent_language(model, src="xx", tgt="zh")
    with pytest.raises(InterlayerError, match="valid languages"):
        check_task("cloze", "fr", "sw", ["en"])


def test_packaged_word_list_and_cloze():
    words = load_words()
    assert len(words) >= 100 and {"en", "fr", "de", "es", "ru", "zh", "ja", "ko"} <= set(words.columns)
    assert words.notna().all().all() and words["en"].is_unique
    cloze = load_cloze()
    assert len(cloze["items"]) >= 50 and set(cloze["languages"]) <= set(words.columns)
    assert all(item["en_word"] in set(words["en"]) for item in cloze["items"])
    assert all(s.count('"___"') == 1 for item in cloze["items"] for s in item["sentences"].values())
    row = words.iloc[0]
    prompt = build_prompt("translation", "fr", "zh", row, [words.iloc[1], words.iloc[2]])
    assert prompt.endswith(f'{LANGUAGE_NAMES["fr"]}: "{row.fr}" - {LANGUAGE_NAMES["zh"]}: "')
    assert prompt.count("\n") == 2


def test_exit_layers():
    top1 = torch.tensor([[1, 5, 5, 2], [1, 5, 3, 2], [2, 5, 3, 2], [2, 5, 3, 9]])  # [layers=4, tokens=4]
    assert exit_layers(top1).tolist() == [2, 0, 1, 3]


def test_saturation_matches_direct_top1(model, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(" ".join(f"w{4 + (i * j) % 60}" for i in range(20)) for j in range(30)))
    result = saturation(model, str(path), tokens=100, context_length=16, progress=False)
    frame = result.to_frame()
    assert result.n_tokens == 100 and frame.match_final.iloc[-1] == 1.0
    assert frame.exit_fraction.sum() == pytest.approx(1.0)
    from interlayer import collect

    acts = collect(model, str(path), "resid_post.*", context_length=16, limit=7, progress=False)
    for layer in range(model.n_layers):
        direct = model.unembed_resid(acts[f"resid_post.{layer}"][:100]).argmax(-1)
        assert torch.equal(result.top1[layer], direct)
    assert result.exit_histogram().tokens.sum() == 100 and len(result.plot().data) == 3


def test_saturation_with_entropy_and_kl_decodes_them_in_the_same_pass(model, tmp_path):
    from interlayer import collect
    from interlayer.lens.saturation import SaturationResult

    path = tmp_path / "t.txt"
    path.write_text("\n".join(" ".join(f"w{4 + (i * j) % 60}" for i in range(20)) for j in range(30)))
    plain = saturation(model, str(path), tokens=100, context_length=16, progress=False)
    assert plain.entropy is None and plain.kl_to_final is None and "entropy" not in plain.to_json()
    full = saturation(model, str(path), tokens=100, context_length=16, entropy_and_kl=True, progress=False)
    assert torch.equal(full.top1, plain.top1) and torch.equal(full.exit_layer, plain.exit_layer)
    assert full.to_frame().equals(plain.to_frame())
    acts = collect(model, str(path), "resid_post.*", context_length=16, limit=7, progress=False)
    final = torch.log_softmax(model.unembed_resid(acts[f"resid_post.{model.n_layers - 1}"][:100]).float(), -1)
    for layer in range(model.n_layers):
        logp = torch.log_softmax(model.unembed_resid(acts[f"resid_post.{layer}"][:100]).float(), -1)
        torch.testing.assert_close(full.entropy[layer], -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=0)
        torch.testing.assert_close(full.kl_to_final[layer], (final.exp() * (final - logp)).sum(-1), atol=1e-5, rtol=0)
    loaded = SaturationResult.from_json(full.to_json())
    assert torch.equal(loaded.entropy, full.entropy) and torch.equal(loaded.kl_to_final, full.kl_to_final)


def test_latent_cli_writes_the_schema(tmp_path, capsys, monkeypatch):
    from interlayer.cli import dispatch as cli
    import interlayer.lens.latent as latent

    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    monkeypatch.setattr(latent, "load_words", tiny_words)
    code = cli.main(["lens", "latent", "--model", str(tmp_path / "ckpt"), "--src", "fr", "--tgt", "zh", "--task",
                     "translation", "--shots", "2", "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert code == 0
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["model"] == str(tmp_path / "ckpt") and payload["task"] == "translation"
    assert payload["src"] == "fr" and payload["tgt"] == "zh" and payload["n_words"] == 10
    assert len(payload["layers"]) == len(payload["p_target"]) == len(payload["p_latent"]["en"]) == 3
    assert len(payload["p_source"]) == len(payload["entropy"]) == 3 and "p_target" in payload["ci"]
    loaded = latent.LatentResult.load(tmp_path / "r.json")  # what the command wrote opens in Python
    assert loaded.n_words == 10 and loaded.to_json()["p_target"] == payload["p_target"]
    assert "10 words used; 0 skipped" in capsys.readouterr().out
    # a usage error: exit status 2, the valid tasks listed, no traceback
    assert cli.main(["lens", "latent", "--model", str(tmp_path / "ckpt"), "--task", "poem"]) == 2
    err = capsys.readouterr().err
    assert "'translation', 'repetition', 'cloze'" in err and "Traceback" not in err
    assert cli.main(["lens", "latent", "--model", str(tmp_path / "ckpt"), "--tgt", "xx"]) == 2
    assert "valid languages" in capsys.readouterr().err
