"""Bad input: a clear error naming the problem and the valid choices, before any model
loads, never a traceback; nothing the user wrote is deleted; a failed run never blocks
the corrected one (issue 10, part 2)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.errors import InterlayerError
from tests.tiny_models import make_tiny, make_tokenizer

DOCS = [" ".join(f"w{4 + (i * j) % 60}" for i in range(9)) for j in range(50)]
NO_MODEL = "no-such-model-dir"  # loading it would fail: an error about anything else proves it came first


@pytest.fixture
def ckpt(tmp_path):
    make_tiny("gemma3").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    return tmp_path / "ckpt"


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("\n".join(DOCS))
    return path


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    assert "Traceback" not in out.err, out.err
    return code, out.err


def usage_error(capsys, *argv, says):
    code, err = run(capsys, *argv)
    assert code == 2, err
    for text in [says] if isinstance(says, str) else says:
        assert text in err, err
    assert "no-such-model-dir" not in err  # failed before the model was looked at
    return err


# ----------------------------------------------------------- 1, 2: the cache
def test_a_failed_cache_run_does_not_block_the_corrected_one(ckpt, tmp_path, capsys):
    out = tmp_path / "acts"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, err = run(capsys, "cache", "--model", ckpt, "--data", empty, "--out", out, "--tokens", "50",
                    "--context-length", "8", "--no-progress")
    assert code == 2 and "no documents" in err
    code, err = run(capsys, "cache", "--model", ckpt, "--data", tmp_path / "d.txt", "--out", out, "--tokens", "50",
                    "--context-length", "8", "--no-progress")
    assert code == 2 and "does not exist" in err  # missing data: nothing written
    (tmp_path / "d.txt").write_text("\n".join(DOCS))
    code, err = run(capsys, "cache", "--model", ckpt, "--data", tmp_path / "d.txt", "--out", out, "--tokens", "50",
                    "--context-length", "8", "--no-progress")
    assert code == 0, err
    assert interlayer.ActivationStore(out).n_rows == 50


def test_a_disk_budget_too_small_for_one_shard_does_not_block_a_rerun(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    docs = [[4 + (7 * j + i) % 60 for i in range(9)] for j in range(40)]
    with pytest.raises(InterlayerError, match="disk budget"):
        interlayer.cache(model, docs, "resid_post.1", tmp_path / "c", tokens=100, context_length=8,
                         disk_budget_mb=1e-6, progress=False)
    store = interlayer.cache(model, docs, "resid_post.2", tmp_path / "c", tokens=100, context_length=8, progress=False)
    assert store.sites == ["resid_post.2"] and store.n_rows == 100


def test_cache_refuses_a_foreign_directory_and_deletes_nothing_it_did_not_write(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    docs = [[4 + (7 * j + i) % 60 for i in range(9)] for j in range(40)]
    foreign = tmp_path / "d"
    foreign.mkdir()
    (foreign / "shard_notes.txt").write_text("mine")
    with pytest.raises(InterlayerError, match="not empty and holds no activation cache.*shard_notes.txt"):
        interlayer.cache(model, docs, "resid_post.1", foreign, tokens=50, context_length=8, progress=False)
    assert (foreign / "shard_notes.txt").read_text() == "mine"
    # Inside its own cache directory the store removes only stale files named like its shards.
    own = tmp_path / "c"
    interlayer.cache(model, docs, "resid_post.1", own, tokens=50, context_length=8, progress=False)
    (own / "shard_notes.txt").write_text("mine")
    (own / "shard_00099.safetensors.part").write_bytes(b"x")
    manifest = json.loads((own / "manifest.json").read_text())
    manifest["complete"] = False
    (own / "manifest.json").write_text(json.dumps(manifest))
    interlayer.cache(model, docs, "resid_post.1", own, tokens=50, context_length=8, progress=False)
    assert (own / "shard_notes.txt").read_text() == "mine"
    assert not (own / "shard_00099.safetensors.part").exists()


def test_cache_options_object_equals_keywords(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    docs = [[4 + (7 * j + i) % 60 for i in range(9)] for j in range(40)]
    a = interlayer.cache(model, docs, "resid_post.1", tmp_path / "a", tokens=60, context_length=8, storage_dtype="bf16",
                         progress=False)
    b = interlayer.cache(model, docs, "resid_post.1", tmp_path / "b",
                         options=interlayer.CacheOptions(tokens=60, context_length=8, storage_dtype="bfloat16", progress=False))
    assert torch.equal(a.load("resid_post.1"), b.load("resid_post.1"))
    with pytest.raises(TypeError, match="contxt_length"):  # the keywords are explicit now
        interlayer.cache(model, docs, "resid_post.1", tmp_path / "x", tokens=60, contxt_length=8)
    with pytest.raises(InterlayerError, match="unknown option.*'contxt_length'.*valid options"):
        interlayer.CacheOptions.from_kwargs({"contxt_length": 8})
    with pytest.raises(InterlayerError, match="tokens must be at least 1"):
        interlayer.CacheOptions(tokens=0)


# ----------------------------------------------------- 3, 4, 9: before loading
@pytest.mark.parametrize("argv, says", [
    (["sae", "train", "--model", NO_MODEL, "--latents", "0", "--out", "o"], "--latents: must be at least 1, got 0"),
    (["lens", "logit", "--model", NO_MODEL, "--top-k", "0"], "--top-k: must be at least 1, got 0"),
    (["lens", "logit", "--model", NO_MODEL, "--top-k", "-1"], "--top-k: must be at least 1, got -1"),
    (["lens", "logit", "--model", NO_MODEL, "--out", "table.txt"], ["unknown extension", "'.csv', '.json'"]),
    (["lens", "latent", "--model", NO_MODEL, "--shots", "-1"], "--shots: must be at least 0"),
    (["cache", "--model", NO_MODEL, "--data", "d.txt", "--out", "o", "--batch-size", "0"], "--batch-size: must be at least 1"),
    (["cache", "--model", NO_MODEL, "--out", "o"], "--data is required"),
    (["consistency", "--model", NO_MODEL, "--n", "-1"], "--n: must be at least 2, got -1"),
    (["mexa", "--model", NO_MODEL, "--out", "scores.csv"], ["unknown extension", "'.json'"]),
    (["sae", "eval", "--model", NO_MODEL, "--sae", "x"], "--out is required"),
    (["lens", "tune", "--model", NO_MODEL, "--steps", "0", "--out", "d"], "--steps: must be at least 1"),
])
def test_bad_flags_fail_before_the_model_loads(capsys, argv, says):
    usage_error(capsys, *argv, says=says)


def test_bad_files_and_sites_fail_before_the_model_loads(capsys, tmp_path, text):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{not json}\n')
    (tmp_path / "num.jsonl").write_text('{"text": 123}\n')
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (tmp_path / "file").write_text("x")
    base = ["cache", "--model", NO_MODEL, "--no-progress"]
    usage_error(capsys, *base, "--data", "/bin/ls", "--out", tmp_path / "o", says="not UTF-8 text")
    usage_error(capsys, *base, "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "o", says="bad.jsonl:2 is not valid JSON")
    usage_error(capsys, *base, "--data", tmp_path / "num.jsonl", "--out", tmp_path / "o", says="field 'text' is int '123', not text")
    usage_error(capsys, *base, "--data", tmp_path / "latin1.txt", "--out", tmp_path / "o", says="byte 0xe9")
    (tmp_path / "no_data").mkdir()
    usage_error(capsys, *base, "--data", tmp_path / "no_data", "--out", tmp_path / "o", says="is a folder without any")
    usage_error(capsys, *base, "--data", tmp_path, "--out", tmp_path / "o", says="is not valid JSON")  # a folder: each file
    usage_error(capsys, *base, "--data", text, "--out", tmp_path / "file", says="is a file, not a directory")
    usage_error(capsys, *base, "--data", text, "--out", "/proc/interlayer-out", says="is not writable")
    usage_error(capsys, *base, "--data", text, "--out", tmp_path / "o", "--sites", "resid_psot.3",
                says=["unknown site kind 'resid_psot'", "'resid_post'"])
    (tmp_path / "t.csv").mkdir()
    usage_error(capsys, "lens", "logit", "--model", NO_MODEL, "--out", tmp_path / "t.csv", says="is a directory")
    assert not (tmp_path / "o").exists()


def test_mexa_non_utf8_file_is_a_clear_error(capsys, tmp_path):
    from interlayer.probes.mexa import packaged_data_dir

    flores = Path(packaged_data_dir())
    for lang in ("eng_Latn", "fra_Latn"):
        (tmp_path / f"{lang}.txt").write_bytes((flores / f"{lang}.devtest").read_bytes())
    (tmp_path / "fra_Latn.txt").write_bytes("caf\xe9\n".encode("latin-1") * 100)
    usage_error(capsys, "probes", "mexa", "--model", NO_MODEL, "--langs", "fra_Latn", "--dataset", tmp_path, "--n", "5",
                says=["fra_Latn.txt is not UTF-8 text", "byte 0xe9"])


def test_info_on_broken_checkpoints_is_a_clear_error(capsys, tmp_path, ckpt):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, err = run(capsys, "info", broken)
    assert code == 2 and "is not a loadable Hugging Face checkpoint" in err
    (ckpt / "model.safetensors").unlink()
    code, err = run(capsys, "info", ckpt)
    assert code == 2 and "is not a loadable Hugging Face checkpoint" in err


def test_out_that_is_a_file_is_refused_before_training(capsys, tmp_path, text, ckpt):
    (tmp_path / "file").write_text("x")
    code, err = run(capsys, "sae", "train", "--model", ckpt, "--data", text, "--out", tmp_path / "file",
                    "--no-progress")
    assert code == 2 and "is a file, not a directory" in err


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(InterlayerError):
        cli.main(["--debug", "info", NO_MODEL])


# ------------------------------------------------------------ 7: the store
def test_store_inputs_are_checked(tmp_path):
    hf = make_tiny("llama")
    model = interlayer.load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))
    with pytest.raises(InterlayerError, match="max_length must be an integer of at least 1, got -1"):
        interlayer.collect(model, ["w5 w6 w7"], "resid_post.0", max_length=-1)
    with pytest.raises(InterlayerError, match="integer ids, got dtype torch.float32"):
        interlayer.collect(model, torch.tensor([[1.0, 5.0, 6.0]]), "resid_post.0")
    with pytest.raises(InterlayerError, match="token id 64 is out of range.*0..63"):
        interlayer.collect(model, [[1, 5, 64]], "resid_post.0")
    with pytest.raises(InterlayerError, match="holds 5.0 of type float"):
        interlayer.collect(model, [[1, 5.0, 6]], "resid_post.0")
    with pytest.raises(InterlayerError, match="batch_size must be an integer of at least 1"):
        interlayer.collect(model, ["w5"], "resid_post.0", batch_size=0)
    from interlayer.probes.consistency import load_examples

    with pytest.raises(InterlayerError, match="n must be an integer of at least 2"):
        load_examples("coinflip", -1)  # was: the first 99 questions


# ------------------------------------------------------------- 8: the hub
def test_an_offline_hub_id_fails_at_once_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    began = time.perf_counter()
    with pytest.raises(interlayer.UnknownModelError) as info:
        interlayer.load_model("no-such-org/no-such-model")
    assert time.perf_counter() - began < 5
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE is set" in message and "gemma-3-270m" in message


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens here
    began = time.perf_counter()
    with pytest.raises(interlayer.UnknownModelError, match="127.0.0.1:9 does not answer"):
        interlayer.load_model("no-such-org/no-such-model")
    assert time.perf_counter() - began < 10


# ------------------------------------------------------ 10: lens progress
def test_logit_lens_shows_progress_over_decoding(capsys, ckpt, monkeypatch):
    code = cli.main(["lens", "logit", "--model", str(ckpt), "--prompt", "w5 w6 w7"])
    assert code == 0 and "decode" not in capsys.readouterr().err  # stderr is no terminal here: no bars in logs
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code = cli.main(["lens", "logit", "--model", str(ckpt), "--prompt", "w5 w6 w7"])
    assert code == 0
    assert "decode" in capsys.readouterr().err
    code = cli.main(["lens", "logit", "--model", str(ckpt), "--prompt", "w5 w6 w7", "--no-progress"])
    assert code == 0 and "decode" not in capsys.readouterr().err
