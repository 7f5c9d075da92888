"""interlayer.options: the option groups compose, and the one comma-list type."""

from __future__ import annotations

import dataclasses

import pytest

from interlayer.cli import dispatch as cli
from interlayer.decoding import LOGIT_LENS
from interlayer.errors import InterlayerError
from interlayer.model.options import ModelOptions
from interlayer.options import (CONTEXT_LENGTH, LIST_TYPES, Options, PassOptions, RunOptions, TextOptions, comma_list,
                                int_list, number_list, option, resolve_layers, str_list, words_or)

NO_MODEL = "no-such-model-dir"


# ------------------------------------------------------------------ list types
def test_comma_lists_take_negatives_and_skip_blank_items():
    assert int_list("3, -1,,6,") == [3, -1, 6]
    assert number_list("-4,-.5, 2") == [-4.0, -0.5, 2.0]
    assert str_list(" en , fr,") == ["en", "fr"]
    assert int_list([3, "4"]) == [3, 4]  # a list from Python, item by item
    assert comma_list("1;2", str) == ["1;2"]
    assert str_list(" , ", empty=True) == [] and int_list("", empty=True) == []


@pytest.mark.parametrize("reader, text, message", [
    (int_list, "3,x", "must be comma-separated integers, e.g. 3,6,9"),
    (int_list, " , ", "is empty"),
    (number_list, "1,nan", "'nan' in '1,nan' is not finite"),
    (number_list, "inf", "'inf' is not finite"),
    (number_list, "-4,four", "must be comma-separated numbers"),
    (str_list, ",", "is empty"),
])
def test_bad_lists_are_errors(reader, text, message):
    with pytest.raises(InterlayerError, match=message):
        reader(text)


def test_words_or_a_list():
    dola = words_or(("high", "low"), int_list)
    assert dola("high") == "high" and dola(" low ") == "low" and dola("0,2") == [0, 2]
    with pytest.raises(InterlayerError, match="'high', 'low'"):
        dola("middle")


def test_layer_ranges_with_negatives():
    assert resolve_layers("0-2,-1", 6) == [0, 1, 2, 5]
    assert resolve_layers("-3--2", 6) == [3, 4]


def test_items_option_reads_a_list_and_names_the_flag():
    @dataclasses.dataclass
    class Config(Options):
        coefs: str = option("-4,4", "coefficients", items=float)
        layers: str | None = option(None, "blocks", items=int)

    assert Config.__dataclass_fields__["coefs"].metadata["parse"] is LIST_TYPES[float] is number_list
    assert Config().parsed("coefs") == [-4.0, 4.0] and Config().parsed("layers") is None
    assert Config(coefs=[1, 2]).parsed("coefs") == [1.0, 2.0]
    with pytest.raises(InterlayerError, match="--coefs '1,x' must be comma-separated numbers"):
        Config(coefs="1,x")
    with pytest.raises(InterlayerError, match="items="):
        option(None, "x", items=bytes)


@pytest.mark.parametrize("argv, flag", [
    (["lens", "generate", "--prompt", "x", "--candidates", "3,x"], "--candidates"),
    (["lens", "generate", "--prompt", "x", "--dola-layers", "middle"], "--dola-layers"),
    (["lens", "latent", "--latent", ","], "--latent"),
    (["probes", "mexa", "--langs", ",,"], "--langs"),
    (["steer", "sweep", "--coefs", "1,,x", "--out", "s.json"], "--coefs"),
])
def test_bad_list_items_fail_before_the_model_loads(capsys, argv, flag):
    code = cli.main([*argv, "--model", NO_MODEL])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and NO_MODEL not in err


# ------------------------------------------------------------------ groups
def test_groups_compose_and_check_every_field_once():
    calls = []

    @dataclasses.dataclass
    class Checked(Options):
        level: int = option(1, "a level", min=0)

        def __post_init__(self) -> None:
            super().__post_init__()
            calls.append(self.level)

    @dataclasses.dataclass
    class Command(RunOptions, Checked, TextOptions, ModelOptions):
        extra: int = option(3, "its own", min=1)

    made = Command(extra=4)
    assert calls == [1] and made.context_length == CONTEXT_LENGTH and made.model and made.no_progress is False
    names = [f.name for f in dataclasses.fields(Command)]
    assert names[:4] == ["model", "device", "dtype", "trust_remote_code"] and names[-1] == "extra"
    for bad, flag in [({"context_length": 1}, "--context-length"), ({"level": -1}, "--level"),
                      ({"extra": 0}, "--extra"), ({"dtype": "int3"}, "--dtype")]:
        with pytest.raises(InterlayerError, match=flag):
            Command(**bad)


def test_a_variant_keeps_the_groups_bounds():
    @dataclasses.dataclass
    class Prompts(Options):
        batch_size: int = PassOptions.variant("batch_size", 4, "prompts per forward pass")
        tokens: int = TextOptions.variant("tokens", help="tokens to analyse")

    field = Prompts.__dataclass_fields__["batch_size"]
    assert field.default == 4 and field.metadata["help"] == "prompts per forward pass" and field.metadata["min"] == 1
    assert Prompts().tokens == TextOptions().tokens
    with pytest.raises(InterlayerError, match="--batch-size must be at least 1"):
        Prompts(batch_size=0)


def test_lens_options_build_the_lens(tmp_path):
    from interlayer.lens.config import LensOptions

    assert LensOptions().build(None) is LOGIT_LENS
    LensOptions().check_lens()
    with pytest.raises(InterlayerError, match="--tuned-lens .* is not a saved tuned lens"):
        LensOptions(tuned_lens=str(tmp_path)).check_lens()


def test_the_old_paths_still_import():
    from interlayer.cli.config import ModelOptions as old

    assert old is ModelOptions
    with pytest.warns(DeprecationWarning, match="lens.config"):
        from interlayer.cli.config import LogitLensConfig
    from interlayer.lens.config import LogitLensConfig as new

    assert LogitLensConfig is new
