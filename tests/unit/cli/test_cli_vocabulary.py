"""One CLI vocabulary (issue 22, part 2): every command's parser is walked and checked
against the rules, so a new command follows them or this test names it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from interlayer.cli import dispatch as cli
from interlayer.cli.registry import build_parser
from interlayer.cli.config import ModelOptions
from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.model.sites import one_site
from interlayer.options import GROUPS, flag_name, group_of, layer_spec, number_list, resolve_layers
from tests.tiny_models import make_tiny, make_tokenizer

NO_MODEL = "no-such-model-dir"  # loading it would fail: an error about anything else proves it came first

PRINT_ONLY = {"models", "info", "steer apply"}
"""Commands that only print (everything else writes, so takes -o/--out)."""

PROMPTING = {"lens logit", "lens latent", "lens iks", "lens generate", "lens qa", "probes consistency", "steer train",
             "steer apply", "steer sweep"}
"""Commands that prompt a model (so take --chat)."""

LENS_TAKING = {"lens logit", "lens latent", "lens saturation", "lens iks", "lens generate", "lens qa",
               "probes consistency", "report"}
"""Commands whose function takes ``lens=`` (so take --tuned-lens)."""

OLD_SPELLINGS = {"--limit", "--warmup", "--figure", "--gguf", "--forward-batch-size", "--eval-batch-size",
                 "--train-batch-size"}
GLOBAL = {"-h", "--help", "-v", "--verbose", "--debug", "-q", "--quiet", "--json", "--config", "--print-config"}


def _commands() -> dict[str, tuple[object, argparse.ArgumentParser]]:
    """Every registered command with its own subparser."""
    commands = cli.discover()
    parser = build_parser(commands)
    out = {}
    for name, cmd in commands.items():
        words = name.split()
        sub = parser._subparsers._group_actions[0].choices[words[0]]
        if len(words) == 2:
            sub = sub._subparsers._group_actions[0].choices[words[1]]
        out[name] = (cmd, sub)
    return out


COMMANDS = _commands()


def _options(sub: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in sub._actions for s in a.option_strings}


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_vocabulary(name):
    cmd, sub = COMMANDS[name]
    options = _options(sub)
    fields = {f.name: f for f in dataclasses.fields(cmd.config) if f.metadata.get("cli", True)}
    if issubclass(cmd.config, ModelOptions):
        assert "--model" in options, name
    if name not in PRINT_ONLY:
        assert {"-o", "--out"} <= set(options) and options["-o"] is options["--out"], name
    if name in PROMPTING or "prompt" in fields:
        chat = options.get("--chat")
        assert chat is not None and tuple(chat.choices) == ("auto", "yes", "no") and chat.default == "auto", name
    if name in LENS_TAKING:
        assert "--tuned-lens" in options, name
    if {"data", "eval_data"} & set(fields):  # input text comes with the field holding it
        assert "--text-field" in options, name
    assert not OLD_SPELLINGS & set(options), (name, OLD_SPELLINGS & set(options))
    for field_name, field in fields.items():
        if field_name == "site":
            assert field.metadata["parse"] is one_site, name  # --site is always one full site
        if field_name == "layers":
            assert field.metadata["parse"] is layer_spec, name
        if flag_name(field) == "--batch-size":
            assert "per" in field.metadata["help"] and "forward pass" in field.metadata["help"], name
        assert group_of(field) in GROUPS
    # help in argument groups; no "(default: None)" anywhere, required options say so
    text = sub.format_help()
    assert "(default: None)" not in text, name
    titles = [g.title for g in sub._action_groups]
    if issubclass(cmd.config, ModelOptions):
        assert "model options" in titles, name
    for group in sub._action_groups:
        for action in group._group_actions:
            if set(action.option_strings) - GLOBAL and action.help != argparse.SUPPRESS:
                assert group.title in {f"{g} options" for g in GROUPS}, (name, action.option_strings)
    for field in fields.values():
        if field.metadata.get("required"):
            assert "(required" in options[flag_name(field)].help, (name, flag_name(field))
    # the global flags also work after the command's name
    args = cli.build_parser(cli.discover()).parse_args([*name.split(), "--quiet", "--json", "--debug", "-v"])
    assert args.quiet and args.json and args.debug and args.verbose


def test_site_values_are_full_sites(capsys):
    for name, (cmd, sub) in COMMANDS.items():
        if "--site" not in _options(sub):
            continue
        parsed = sub.parse_args(["--site", "resid_post.6"])
        assert parsed.site == "resid_post.6"
        with pytest.raises(SystemExit):
            sub.parse_args(["--site", "resid_post.*"])
        assert "is not one site" in capsys.readouterr().err, name


def test_lists_of_numbers_take_negatives_and_refuse_non_finite(capsys):
    parser = build_parser(cli.discover())
    args = parser.parse_args(["steer", "sweep", "--coefs", "-4,4", "--layers", "-1"])
    assert number_list(args.coefs) == [-4.0, 4.0] and args.layers == "-1"
    assert parser.parse_args(["steer", "sweep", "--coefs", "-.5"]).coefs == "-.5"
    assert parser.parse_args(["steer", "apply", "--layers", "-4--1"]).layers == "-4--1"
    for bad in ("inf", "1,nan", "-4,x", ""):
        code, _, err = _run(capsys, "steer", "sweep", "--model", NO_MODEL, "--coefs", bad, "--out", "s.json")
        assert code == 2 and "--coefs" in err and NO_MODEL not in err, bad  # before any model loads


def test_layer_specs():
    assert layer_spec("all") == "all"
    assert resolve_layers("6-12", 18) == list(range(6, 13))
    assert resolve_layers("0,3,-1", 18) == [0, 3, 17]
    assert resolve_layers("-4--1", 18) == [14, 15, 16, 17]
    assert resolve_layers("all", 3) == [0, 1, 2]
    with pytest.raises(LayerIndexError, match="layer 18 is out of range.*0..17"):
        resolve_layers("18", 18)
    with pytest.raises(InterlayerError, match="runs backwards"):
        resolve_layers("5-2", 18)
    with pytest.raises(InterlayerError, match="ranges"):
        layer_spec("six")


@pytest.mark.parametrize("alias, name", [("iks", "lens iks"), ("generate", "lens generate"), ("qa", "lens qa"),
                                         ("mexa", "probes mexa"), ("consistency", "probes consistency")])
def test_old_names_still_run_with_a_notice(capsys, alias, name):
    code, out, err = _run(capsys, alias, "--print-config", *(["--prompt", "x"] if alias == "generate" else []))
    assert code == 0 and "model = " in out
    assert f"`interlayer {alias}` is deprecated; use `interlayer {name}`" in err and len(err.strip().splitlines()) == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--version"])
    assert info.value.code == 0
    version = capsys.readouterr().out.split()
    assert version[0] == "interlayer" and version[1][0].isdigit()


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "exit status" in text and all(f"  {c}  " in text for c in "0123")


# ------------------------------------------------------------------ exit codes
@pytest.fixture
def ckpt(tmp_path, capsys):
    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    capsys.readouterr()  # what saving the checkpoint printed
    return tmp_path / "ckpt"


def test_exit_2_is_bad_input_before_any_computation(capsys):
    code, _, err = _run(capsys, "lens", "logit", "--model", NO_MODEL, "--top-k", "0")
    assert code == 2 and "--top-k" in err and NO_MODEL not in err
    code, _, err = _run(capsys, "sae", "eval", "--model", NO_MODEL, "--sae", "x")
    assert code == 2 and "--out is required" in err and "Traceback" not in err
    code, _, err = _run(capsys, "info", "--model", NO_MODEL)
    assert code == 2 and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"),
                                   OSError(28, "No space left on device"), "NonFiniteError"])
def test_exit_1_is_a_failure_during_the_computation(capsys, ckpt, monkeypatch, error):
    import importlib

    module = importlib.import_module("interlayer.lens.logit_lens")
    if error == "NonFiniteError":
        from interlayer.saes.training import NonFiniteError

        error = NonFiniteError("the loss became NaN at step 3")

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(module, "logit_lens", broken)
    capsys.readouterr()
    code, _, err = _run(capsys, "lens", "logit", "--model", ckpt, "--prompt", "w5")
    assert code == 1, err
    assert err.startswith("interlayer: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(type(error)):  # --debug, even after the command's name, shows the traceback
        cli.main(["lens", "logit", "--model", str(ckpt), "--prompt", "w5", "--debug"])


def test_exit_3_is_a_report_with_failed_sections(capsys, ckpt, tmp_path, monkeypatch):
    from interlayer.report import build

    def fake_report(model, out, **kwargs):
        out = Path(out)
        results = {"model": SimpleNamespace(status="ok", seconds=0.1, forward_calls=1),
                   "mexa": SimpleNamespace(status="failed", seconds=0.2, forward_calls=0)}
        return SimpleNamespace(results=results, html=out, json=out.with_suffix(".json"),
                               tables=out.with_name(out.stem + ".tables"))

    monkeypatch.setattr(build, "build_report", fake_report)
    code, out, _ = _run(capsys, "report", "--model", ckpt, "-o", tmp_path / "r.html", "--json")
    assert code == 3
    assert [s["status"] for s in json.loads(out)["sections"]] == ["ok", "failed"]


# ------------------------------------------------------------------ config files
def test_a_config_file_sets_options_and_flags_override_it(capsys, tmp_path):
    file = tmp_path / "sweep.toml"
    file.write_text('model = "m"\ncoefs = [-4, 4]\nlayers = "6-8"\nn = 7\nno_progress = true\nout = "s.json"\n')
    code, out, _ = _run(capsys, "steer", "sweep", "--config", file, "--n", "9", "--print-config")
    assert code == 0
    assert 'coefs = "-4,4"' in out and 'layers = "6-8"' in out and "n = 9" in out and "no_progress = true" in out
    again = tmp_path / "again.toml"  # what --print-config shows reads back as the same configuration
    again.write_text(out)
    code, out2, _ = _run(capsys, "steer", "sweep", "--config", again, "--print-config")
    assert code == 0 and out2 == out
    code, out, _ = _run(capsys, "steer", "sweep", "--config", file, "--print-config", "--json")
    assert json.loads(out)["n"] == 7 and json.loads(out)["coefs"] == "-4,4"
    train = tmp_path / "train.toml"  # keys are the flags' names, also where the field is named otherwise
    train.write_text("tokens_per_step = 64\nbatch-size = 4\nwarmup_steps = 3\n")
    code, out, _ = _run(capsys, "sae", "train", "--config", train, "--print-config", "--json")
    values = json.loads(out)
    assert code == 0 and (values["tokens_per_step"], values["batch_size"], values["warmup_steps"]) == (64, 4, 3)



def test_a_yaml_config_file_sets_options_and_flags_override_it(capsys, tmp_path):
    file = tmp_path / "sweep.yaml"
    file.write_text("model: m\ncoefs: [-4, 4]\nlayers: 6-8\nn: 7\nno_progress: true\nout: s.json\n")
    code, out, _ = _run(capsys, "steer", "sweep", "--config", file, "--n", "9", "--print-config", "--json")
    values = json.loads(out)
    assert code == 0
    assert (values["model"], values["coefs"], values["layers"], values["n"], values["no_progress"], values["out"]) == \
        ("m", "-4,4", "6-8", 9, True, "s.json")  # n: the flag beats the file
    code, out, _ = _run(capsys, "steer", "sweep", "--config", file, "--print-config", "--json")
    assert code == 0 and json.loads(out)["n"] == 7
    listed = tmp_path / "g.yml"  # a repeatable flag: a YAML list, replaced by the command line's
    listed.write_text("prompt:\n  - a\n  - b\nmax-new-tokens: 5\n")
    code, out, _ = _run(capsys, "lens", "generate", "--config", listed, "--print-config", "--json")
    assert code == 0 and json.loads(out)["prompt"] == ["a", "b"] and json.loads(out)["max_new_tokens"] == 5
    code, out, _ = _run(capsys, "lens", "generate", "--config", listed, "--prompt", "c", "--print-config", "--json")
    assert json.loads(out)["prompt"] == ["c"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("coef: 3\n")
    code, _, err = _run(capsys, "steer", "sweep", "--config", bad)
    assert code == 2 and "unknown key 'coef'" in err


def test_config_file_errors_are_one_line(capsys, tmp_path, monkeypatch):
    bad_key = tmp_path / "a.toml"
    bad_key.write_text('model = "m"\ncoef = 3\n')
    code, _, err = _run(capsys, "steer", "sweep", "--config", bad_key)
    assert code == 2 and "unknown key 'coef'" in err and "valid keys:" in err and "coefs" in err
    bad_value = tmp_path / "b.toml"
    bad_value.write_text("coefs = [1, inf]\n")
    code, _, err = _run(capsys, "steer", "sweep", "--config", bad_value, "--model", NO_MODEL)
    assert code == 2 and "finite" in err and NO_MODEL not in err
    repeated = tmp_path / "c.toml"  # a repeatable flag on the command line replaces the file's list
    repeated.write_text('prompt = ["a", "b"]\n')
    code, out, _ = _run(capsys, "lens", "generate", "--config", repeated, "--print-config")
    assert code == 0 and 'prompt = ["a", "b"]' in out
    code, out, _ = _run(capsys, "lens", "generate", "--config", repeated, "--prompt", "c", "--print-config")
    assert 'prompt = ["c"]' in out
    yaml_file = tmp_path / "d.yaml"
    yaml_file.write_text("n: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not installed
    code, _, err = _run(capsys, "lens", "qa", "--config", yaml_file)
    assert code == 2 and "pip install pyyaml" in err and len(err.strip().splitlines()) == 1


def test_chat_yes_without_a_template_is_bad_input(capsys, ckpt):
    code, _, err = _run(capsys, "lens", "logit", "--model", ckpt, "--prompt", "w5", "--chat", "yes")
    assert code == 2 and "has no chat template; use --chat no" in err


def test_json_and_quiet_after_the_command(capsys, ckpt):
    code, out, _ = _run(capsys, "lens", "logit", "--model", ckpt, "--prompt", "w5 w6", "--quiet")
    assert code == 0 and out == ""
    code, out, _ = _run(capsys, "info", "--model", ckpt, "--json")
    assert code == 0 and json.loads(out)["n_layers"] == 3


def test_data_may_be_a_folder_of_text_files(tmp_path):
    from interlayer.store.inputs import check_data_file, data_fingerprint, iter_documents

    (tmp_path / "b.jsonl").write_text('{"body": "two"}\n{"body": "three"}\n')
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "notes.md").write_text("not data")
    check_data_file(tmp_path, text_field="body")
    assert list(iter_documents(tmp_path, text_field="body")) == ["one", "two", "three"]
    before = data_fingerprint(tmp_path)
    (tmp_path / "a.txt").write_text("uno\n")
    assert data_fingerprint(tmp_path) != before
