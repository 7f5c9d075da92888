"""The interlayer CLI: every command has --help built from its config dataclass."""

import dataclasses
import json

import pytest

from interlayer.cli import dispatch as cli
from interlayer.cli.config import InfoConfig
from interlayer.lens.config import LogitLensConfig
from interlayer.options import flag_name
from tests.tiny_models import make_tiny, make_tokenizer


def _run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_command_has_help_listing_every_option(capsys):
    cli.discover()
    assert {"models", "info", "lens logit"} <= set(cli.COMMANDS)
    assert "models" in _help(capsys)
    for name, cmd in cli.COMMANDS.items():
        text = _help(capsys, *name.split())
        for field in dataclasses.fields(cmd.config):
            if not field.metadata.get("cli", True):  # Python-API-only fields
                assert "--" + field.name.replace("_", "-") + " " not in text
                continue
            assert flag_name(field) in text, (name, flag_name(field))
            assert field.metadata["help"].split()[0] in text


def test_models_json_lists_embedded_aliases(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("INTERLAYER_CACHE", str(tmp_path))
    code, out, _ = _run(capsys, "models", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["alias"] for r in rows] == ["gemma-3-270m", "smollm2-135m-instruct"]
    assert all(r["cached"] is False for r in rows)
    assert all(r["installed"] and r["gguf_mb"] > 10 for r in rows)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    make_tiny("gemma2").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_info_on_a_checkpoint(capsys, tiny_checkpoint):
    code, out, _ = _run(capsys, "info", "--model", str(tiny_checkpoint), "--json")
    info = json.loads(out)
    assert code == 0 and info["n_layers"] == 3 and info["d_model"] == 32 and info["final_logit_softcap"] == 2.0
    assert "resid_post.{0..2}" in info["sites"]
    code, out, err = _run(capsys, "info", str(tiny_checkpoint))  # the old positional still works, with a notice
    assert code == 0 and "layers       3" in out and "blocks.0.hook_resid_post" in out
    assert "deprecated" in err and "--model" in err


def test_bad_model_is_a_clean_error(capsys):
    code, out, err = _run(capsys, "info", "--model", "not-a-model")
    assert code == 2 and "gemma-3-270m" in err and "Traceback" not in err


def test_logit_lens_command(capsys, tiny_checkpoint, tmp_path):
    code, out, _ = _run(capsys, "lens", "logit", "--model", str(tiny_checkpoint), "--prompt", "w5 w6 w7",
                        "--top-k", "2", "--out", str(tmp_path / "t.json"))
    assert code == 0
    from interlayer.lens import LogitLensResult

    result = LogitLensResult.load(tmp_path / "t.json")  # what the command wrote opens in Python
    assert len(result.to_frame()) == 3 * 4 * 2  # layers x positions (BOS + 3) x top-k
    assert out.splitlines()[0].split()[:2] == ["0:<s>", "1:w5"]


def test_logit_lens_takes_several_prompts_and_targets(capsys, tiny_checkpoint, tmp_path):
    code, out, _ = _run(capsys, "lens", "logit", "--model", str(tiny_checkpoint), "--prompt", "w5 w6", "--prompt",
                        "w7 w8 w9", "--targets", "w5", "--positions", "last", "--json")
    rows = json.loads(out)
    assert code == 0 and {r["prompt"] for r in rows} == {0, 1}
    assert {(r["prompt"], r["position"]) for r in rows} == {(0, 2), (1, 3)}  # the last position of each (BOS first)
    assert all(0 <= r["p[w5]"] <= 1 for r in rows)


def test_configs_are_the_api_defaults():
    assert InfoConfig().model == "gemma-3-270m"
    assert LogitLensConfig(prompt=["x"]).top_k == 1
