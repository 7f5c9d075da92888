"""Chat-template prompting: the one place a prompt text goes through a tokenizer's chat
template, and the one ``chat`` type every method takes.

``chat`` is a :data:`ChatMode`:

* ``"yes"``: each prompt becomes one user turn of the model's chat template, ending where
  the assistant's answer begins (``add_generation_prompt=True``);
* ``"no"``: the prompt text as it is;
* ``"auto"``: ``"yes"`` when the tokenizer has a chat template *and* the model's name says
  it is an instruct or chat model (``instruct``, ``chat`` or an ``-it`` part), else ``"no"``.

``True``/``False`` (steering's old type) still mean ``"yes"``/``"no"`` for one release,
with a :class:`DeprecationWarning`. A templated prompt already holds the model's special
tokens, so it is tokenised without adding them again.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from .errors import InterlayerError, choices
from .model.adapter import ModelAdapter

ChatMode = Literal["auto", "yes", "no"]
CHAT_MODES: tuple[ChatMode, ...] = ("auto", "yes", "no")
_INSTRUCT = re.compile(r"instruct|chat|(^|[-_])it($|[-_])", re.IGNORECASE)


def chat_mode(chat: ChatMode | bool) -> ChatMode:
    """``chat`` checked as a :data:`ChatMode`; ``True``/``False`` become ``"yes"``/``"no"``
    with a :class:`DeprecationWarning` (accepted for one release)."""
    if isinstance(chat, bool):
        warnings.warn(f"chat={chat} is deprecated; pass chat={'yes' if chat else 'no'!r} (one of "
                      f"{', '.join(CHAT_MODES)})", DeprecationWarning, stacklevel=3)
        return "yes" if chat else "no"
    if chat not in CHAT_MODES:
        raise InterlayerError(f"unknown chat setting {chat!r}; valid choices: {choices(CHAT_MODES)}")
    return chat


def has_chat_template(model: ModelAdapter) -> bool:
    """Whether the model's tokenizer carries a chat template."""
    return bool(getattr(model.tokenizer, "chat_template", None))


def use_chat(model: ModelAdapter, chat: ChatMode | bool = "auto") -> bool:
    """Whether prompts go through the chat template under ``chat`` (module docstring)."""
    mode = chat_mode(chat)
    if mode != "auto":
        return mode == "yes"
    return has_chat_template(model) and bool(_INSTRUCT.search(Path(str(model.name)).name))


def chat_turn(model: ModelAdapter, text: str) -> str:
    """``text`` as one user turn of the model's chat template, ending where the assistant's
    answer begins. A tokenizer without a template is an error naming the way out."""
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer; a chat prompt is text")
    if not has_chat_template(model):
        raise InterlayerError(f"{model.name}'s tokenizer has no chat template; use chat='no' (the plain text)")
    return model.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                               add_generation_prompt=True)


def format_prompts(model: ModelAdapter, texts: Sequence[str], chat: ChatMode | bool) -> list[str]:
    """``texts`` as the model is asked them: through its chat template when ``chat``
    resolves to yes (:func:`use_chat`), else unchanged."""
    on = use_chat(model, chat)
    return [chat_turn(model, t) if on else t for t in texts]


__all__ = ["CHAT_MODES", "ChatMode", "chat_mode", "chat_turn", "format_prompts",
           "has_chat_template", "use_chat"]
