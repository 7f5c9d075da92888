"""load_model's placement options: dtype="auto", device maps with blocks offloaded to disk,
max_memory, revision and quantisation, each checked before anything loads; and the same
options on the command line (ModelOptions)."""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest
import torch
import transformers

import interlayer
from interlayer.errors import InterlayerError
from interlayer.model import placement
from interlayer.model.options import ModelOptions
from tests.tiny_models import make_tiny, make_tokenizer

DISK_MAP = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "disk",
            "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
TEXTS = ["w5 w9 w12 w7 w30", "w40 w41", "w8 w8 w9 w10 w11 w12 w13"]
SITES = ["resid_pre.0", "resid_post.1", "attn_out.1", "mlp_in.1", "resid_mid.2", "mlp_out.2", "resid_post.2"]


@pytest.fixture
def checkpoint(tmp_path):
    hf = make_tiny("llama")
    hf.save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    return hf, tmp_path / "ckpt"


def _no_weights_loaded(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the options were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


# the blocks on disk; then also the embedding and the unembedding (whose weights are then on meta)
ENDS_ON_DISK = {**DISK_MAP, "model.embed_tokens": "disk", "lm_head": "disk"}


@pytest.mark.parametrize("device_map", [DISK_MAP, ENDS_ON_DISK], ids=["blocks", "ends"])
def test_blocks_offloaded_to_disk_give_the_rows_of_the_model_in_memory(checkpoint, tmp_path, device_map):
    hf, path = checkpoint
    memory = interlayer.load_model(str(path), check_sites=False)
    offloaded = interlayer.load_model(str(path), device_map=device_map, offload_folder=tmp_path / "off")
    assert offloaded.blocks[1].mlp.down_proj.weight.device.type == "meta"  # really not in memory
    assert offloaded.model.hf_device_map["model.layers.2"] == "disk" and offloaded.device == torch.device("cpu")
    got = interlayer.collect(offloaded, TEXTS, SITES, logits=True, progress=False)
    want = interlayer.collect(memory, TEXTS, SITES, logits=True, progress=False)
    for site in [*SITES, "logits"]:
        torch.testing.assert_close(got[site], want[site], atol=1e-5, rtol=0, msg=site)
    # against plain Hugging Face: hidden_states[l + 1] is resid_post.l, the logits are the model's
    ids = offloaded.tokenize(TEXTS[0])["input_ids"]
    plain = hf(input_ids=ids, output_hidden_states=True)
    logits, acts = offloaded.run(ids, read=["resid_post.1", "resid_post.2"])
    torch.testing.assert_close(acts["resid_post.1"], plain.hidden_states[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, plain.logits.detach(), atol=1e-5, rtol=0)
    seen = {}
    handle = hf.model.layers[2].mlp.register_forward_hook(lambda m, a, out: seen.setdefault("mlp", out.detach()))
    hf(input_ids=ids)
    handle.remove()
    torch.testing.assert_close(offloaded.run(ids, read=["mlp_out.2"])[1]["mlp_out.2"], seen["mlp"], atol=1e-5, rtol=0)
    assert offloaded.weights_sha256() == memory.weights_sha256()  # the offloaded weights are read in


def test_dtype_auto_is_the_checkpoints_on_a_gpu_and_float32_on_a_cpu(tmp_path, monkeypatch):
    config = transformers.LlamaConfig(dtype="bfloat16")
    assert placement.resolve_dtype("auto", config, on_gpu=False) == torch.float32
    assert placement.resolve_dtype("auto", config, on_gpu=True) == torch.bfloat16
    assert placement.resolve_dtype("float16", config, on_gpu=False) == torch.float16  # asked for explicitly
    assert placement.resolve_dtype(None, config, on_gpu=True) == torch.float32
    cpu = torch.device("cpu")
    assert placement.targets_gpu(cpu, None, cuda_available=True) is False
    assert placement.targets_gpu(cpu, "auto", cuda_available=True) is True
    assert placement.targets_gpu(cpu, "auto", cuda_available=False) is False
    assert placement.targets_gpu(cpu, {"": 0}, cuda_available=True) is True
    assert placement.targets_gpu(cpu, {"": "cpu"}, cuda_available=True) is False
    make_tiny("llama").to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert interlayer.load_model(str(tmp_path / "bf16"), "cpu", "auto", check_sites=False).dtype == torch.float32
    monkeypatch.setattr(placement, "targets_gpu", lambda *a: True)  # as if the weights went to a GPU
    assert interlayer.load_model(str(tmp_path / "bf16"), "cpu", "auto", check_sites=False).dtype == torch.bfloat16


def test_revision_reaches_config_model_and_tokenizer(checkpoint, monkeypatch):
    seen = {}
    for cls in (transformers.AutoConfig, transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, _name=cls.__name__, **kwargs):
            seen[_name] = kwargs.get("revision")
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    interlayer.load_model(str(checkpoint[1]), revision="v1.0", check_sites=False)
    assert seen == {"AutoConfig": "v1.0", "AutoModelForCausalLM": "v1.0", "AutoTokenizer": "v1.0"}


def test_a_device_map_leaving_a_block_nowhere_names_it_before_loading(checkpoint, monkeypatch):
    _no_weights_loaded(monkeypatch)
    partial = {k: v for k, v in DISK_MAP.items() if k not in ("model.layers.2", "model.norm")}
    with pytest.raises(InterlayerError, match=r"puts model\.layers\.2, model\.norm on no device") as info:
        interlayer.load_model(str(checkpoint[1]), device_map=partial)
    assert "\n" not in str(info.value) and "'lm_head'" in str(info.value)  # the blocks listed
    with pytest.raises(InterlayerError, match=r"'model\.layers\.7', not a module"):
        interlayer.load_model(str(checkpoint[1]), device_map={**DISK_MAP, "model.layers.7": "cpu"})


def test_too_little_max_memory_says_how_much_is_needed(checkpoint, monkeypatch):
    hf, path = checkpoint
    _no_weights_loaded(monkeypatch)
    need = sum(p.numel() for p in hf.parameters()) * 4  # float32, computed plainly
    with pytest.raises(InterlayerError) as info:
        interlayer.load_model(str(path), max_memory="cpu=100KB")
    assert f"needs {need / 2**20:.2f} MiB in float32" in str(info.value) and "offload_folder" in str(info.value)
    with pytest.raises(InterlayerError, match=r"needs .* in bfloat16"):
        interlayer.load_model(str(path), max_memory={"cpu": 1000}, dtype="bfloat16")


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_a_quantised_model_without_its_backend_is_one_line(checkpoint, monkeypatch):
    _no_weights_loaded(monkeypatch)
    for config in (transformers.BitsAndBytesConfig(load_in_4bit=True),
                   {"quant_method": "bitsandbytes", "load_in_8bit": True}):
        with pytest.raises(InterlayerError, match="needs the bitsandbytes package") as info:
            interlayer.load_model(str(checkpoint[1]), quantization_config=config)
        assert "\n" not in str(info.value)
    with pytest.raises(InterlayerError, match="names no quant_method"):
        interlayer.load_model(str(checkpoint[1]), quantization_config={"load_in_4bit": True})


def test_float16_on_a_cpu_logs_a_warning(checkpoint, caplog):
    with caplog.at_level(logging.WARNING, logger="interlayer"):
        model = interlayer.load_model(str(checkpoint[1]), "cpu", "float16", check_sites=False)
    assert model.dtype == torch.float16
    assert any("float16 weights on a CPU" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="interlayer"):
        interlayer.load_model(str(checkpoint[1]), "cpu", "bfloat16", check_sites=False)
    assert not any("float16 weights on a CPU" in r.getMessage() for r in caplog.records)


def test_placement_options_are_read_and_refused_in_one_line(tmp_path):
    assert placement.parse_max_memory("0=20GiB, cpu=60GiB") == {0: "20GiB", "cpu": "60GiB"}
    for bad, message in [("0:20GiB", "not device=size"), ("cpu=lots", "not a size"), ("gpu=1GiB", "not a GPU index")]:
        with pytest.raises(InterlayerError, match=message):
            placement.parse_max_memory(bad)
    (tmp_path / "map.json").write_text(json.dumps(DISK_MAP))
    assert placement.parse_device_map(str(tmp_path / "map.json")) == DISK_MAP
    assert placement.parse_device_map('{"": 0}') == {"": 0} and placement.parse_device_map("auto") == "auto"
    for bad, message in [("everywhere", "neither"), ('{"": "gpu"}', "not a device"), ("{oops", "not valid JSON")]:
        with pytest.raises(InterlayerError, match=message):
            placement.parse_device_map(bad)
    with pytest.raises(InterlayerError, match="or a device_map, not both"):
        interlayer.load_model("gemma-3-270m", device="cpu", device_map="auto")


def test_model_options_pass_the_placement_flags_only_when_set(monkeypatch):
    from interlayer.model import loading

    seen = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(k) or "model")
    ModelOptions().load()
    ModelOptions(dtype="auto", device_map='{"": "cpu"}', max_memory="cpu=2GiB", offload_folder="off",
                 revision="main", quantization="bnb-4bit").load()
    assert not {"device_map", "max_memory", "offload_folder", "revision", "quantization_config"} & set(seen[0])
    assert seen[1]["dtype"] == "auto" and seen[1]["device_map"] == {"": "cpu"}
    assert seen[1]["max_memory"] == {"cpu": "2GiB"} and seen[1]["revision"] == "main"
    bnb = seen[1]["quantization_config"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_compute_dtype == torch.bfloat16
    for bad, flag in [({"max_memory": "cpu=lots"}, "--max-memory"), ({"device_map": "{oops"}, "--device-map"),
                      ({"quantization": "gptq"}, "--quantization"), ({"dtype": "half"}, "--dtype")]:
        with pytest.raises(InterlayerError, match=flag):
            ModelOptions(**bad)


def test_the_command_line_takes_the_placement_flags():
    from interlayer.cli import dispatch as cli

    parser = cli.build_parser(cli.discover())
    args = parser.parse_args(["info", "--device-map", "auto", "--max-memory", "cpu=1GiB", "--dtype", "auto",
                              "--revision", "main", "--offload-folder", "off"])
    assert (args.device_map, args.max_memory, args.dtype, args.revision) == ("auto", "cpu=1GiB", "auto", "main")


def test_no_check_sites_reaches_load_model_and_the_check_runs_by_default(monkeypatch):
    from interlayer.cli import dispatch as cli
    from interlayer.model import loading

    seen = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(k) or "model")
    parser = cli.build_parser(cli.discover())
    assert parser.parse_args(["info"]).check_sites is True
    assert parser.parse_args(["info", "--no-check-sites"]).check_sites is False
    ModelOptions().load()
    ModelOptions(check_sites=False).load()
    assert "check_sites" not in seen[0] and seen[1]["check_sites"] is False
