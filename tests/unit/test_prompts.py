"""The one chat-prompt helper: ``chat`` is auto, yes or no (True/False deprecated), and a
chat prompt is one user turn of the template."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from interlayer.errors import InterlayerError
from interlayer.prompts import CHAT_MODES, chat_mode, chat_turn, format_prompts, use_chat


class _Tokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<assistant>"


def _model(name="org/Model-Instruct", template=True):
    tok = _Tokenizer() if template else SimpleNamespace(chat_template=None)
    return SimpleNamespace(name=name, tokenizer=tok)


def test_modes_and_auto():
    assert CHAT_MODES == ("auto", "yes", "no")
    assert use_chat(_model(), "auto") and use_chat(_model("gemma-2-2b-it"), "auto")
    assert not use_chat(_model("gpt2"), "auto")  # a template, but not an instruct model's name
    assert not use_chat(_model(template=False), "auto")
    assert use_chat(_model("gpt2"), "yes") and not use_chat(_model(), "no")
    with pytest.raises(InterlayerError, match=r"unknown chat setting 'maybe'; valid choices: 'auto', 'yes', 'no'"):
        use_chat(_model(), "maybe")


def test_booleans_are_deprecated_yes_and_no():
    with pytest.warns(DeprecationWarning, match="chat='yes'"):
        assert chat_mode(True) == "yes"
    with pytest.warns(DeprecationWarning, match="chat='no'"):
        assert not use_chat(_model(), False)


def test_format_prompts():
    assert format_prompts(_model(), ["a", "b"], "yes") == ["<user>a</user><assistant>", "<user>b</user><assistant>"]
    assert format_prompts(_model(), ["a"], "no") == ["a"]
    with pytest.raises(InterlayerError, match="has no chat template; use chat='no'"):
        chat_turn(_model(template=False), "a")
