"""Generation: the one place that calls Hugging Face ``generate``.

Every method that lets the model write text (LFD and DoLa in :mod:`interlayer.lens`,
steered continuations in :mod:`interlayer.steering`, the sampled reasoning paths of
internal consistency in :mod:`interlayer.probes`) comes here, so the conventions are
written once:

* prompts (text, already chat-formatted if wanted, or token-id lists) are **left-padded**
  (:func:`~interlayer.model.padding.pad_rows`), so every row's last token sits at the
  last position; Hugging Face derives the position ids from the attention mask;
* padding is :attr:`ModelAdapter.pad_token_id` (the tokenizer's pad, else its EOS);
* a row ends at any id of :func:`eos_ids` (the tokenizer's EOS and the generation
  config's), and with ``stop_at_newline`` at its first newline;
* decoding is greedy unless a :class:`Sampling` is given, whose seed is set
  (``torch.manual_seed``) right before sampling;
* read hooks of the adapter (``hooks=``) and :meth:`ModelAdapter.skip_head` wrap the
  call, so a logits processor can read the sites of the same forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .errors import InterlayerError
from .host_memory import trim_host_memory
from .model.adapter import ModelAdapter, SiteFn
from .model.padding import pad_rows

Prompts = Sequence[str] | Sequence[Sequence[int]]
"""Text prompts (formatted already: see :func:`interlayer.prompts.format_prompts`) or token-id lists."""


@dataclass(frozen=True)
class Sampling:
    """Sampling instead of greedy decoding: temperature, nucleus (top-p) and top-k
    (``0``: off) filters, and the seed set before sampling."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InterlayerError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise InterlayerError(f"top_p must lie in (0, 1], got {self.top_p!r}")
        if self.top_k < 0:
            raise InterlayerError(f"top_k must be >= 0 (0: off), got {self.top_k!r}")


def eos_ids(model: ModelAdapter) -> set[int]:
    """The ids that end a row: the tokenizer's EOS and every EOS of the model's generation config."""
    ids = set()
    config_eos = getattr(getattr(model.model, "generation_config", None), "eos_token_id", None)
    for value in (model.eos_token_id, config_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def left_padded(model: ModelAdapter, prompts: Prompts) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of the prompts, left-padded with the model's pad id
    (text is tokenized by :meth:`ModelAdapter.tokenize`, BOS included)."""
    items = list(prompts)
    if not items:
        raise InterlayerError("no prompts given")
    if all(isinstance(x, str) for x in items):
        batch = model.tokenize(items, padding_side="left")
        return batch["input_ids"], batch["attention_mask"]
    return pad_rows([list(map(int, x)) for x in items], model.pad_token_id, "left")


TRIM_STEPS = 8
"""Decoding steps between two host-memory trims during generation on a CPU."""


class StopAtNewline:
    """A stopping criterion: a row stops once its generated text holds a newline."""

    def __init__(self, model: ModelAdapter, width: int) -> None:
        self.model, self.width = model, width

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        texts = self.model.tokenizer.batch_decode(input_ids[:, self.width:], skip_special_tokens=True)
        return torch.tensor(["\n" in t for t in texts], device=input_ids.device)


class TrimEvery:
    """A logits processor that changes nothing and hands freed host memory back to the OS
    every ``steps`` decoding steps (:func:`interlayer.host_memory.trim_host_memory`): the
    key-value cache grows by a copy each step, and the freed smaller copies stayed in the
    heap (the resident set crept by 0.7 GiB over the quick report's consistency
    generations on Gemma-2-2B)."""

    def __init__(self, device: Any, steps: int | None = None) -> None:
        self.device, self.steps, self.calls = device, steps or TRIM_STEPS, 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls % self.steps == 0:
            trim_host_memory(self.device)
        return scores


def stop_length(model: ModelAdapter, tokens: Sequence[int], eos: Iterable[int], stop_at_newline: bool) -> int:
    """How many of a row's generated ``tokens`` count: up to and including its first EOS,
    or the token that completes its first newline (the batch may have gone on for other rows)."""
    eos = set(eos)
    for n, token in enumerate(tokens, 1):
        if token in eos:
            return n
        if stop_at_newline and model.tokenizer is not None and \
                "\n" in model.tokenizer.decode(list(tokens[:n]), skip_special_tokens=True):
            return n
    return len(tokens)


def generate_ids(model: ModelAdapter, prompts: Prompts, *, max_new_tokens: int, sampling: Sampling | None = None,
                 paths: int = 1, processors: Sequence[Any] = (), stop_at_newline: bool = False,
                 hooks: Mapping[str, SiteFn] | None = None, skip_head: bool = False) -> torch.Tensor:
    """The generated ids (``[len(prompts) · paths, steps]``, the prompt cut off; finished
    rows are padded with the pad id): greedy, or ``paths`` samples per prompt with ``sampling``.

    ``processors``: logits processors (called with ``(input_ids, scores)``, returning the
    scores), run after the model's; ``hooks``: adapter read hooks active during the call;
    ``skip_head``: the model returns its final hidden state instead of logits (the
    processors then make the scores). On a CPU, freed host memory goes back to the OS every
    :data:`TRIM_STEPS` steps and after the call (:class:`TrimEvery`)."""
    from transformers import LogitsProcessorList, StoppingCriteriaList

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InterlayerError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if paths < 1 or (paths > 1 and sampling is None):
        raise InterlayerError(f"paths={paths!r}: give 1, or more with a Sampling (greedy paths are all the same)")
    ids, mask = left_padded(model, prompts)
    eos = eos_ids(model)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "num_beams": 1, "pad_token_id": model.pad_token_id,
                               "eos_token_id": sorted(eos) or None}
    if sampling is None:
        options["do_sample"] = False
    else:
        options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                       num_return_sequences=paths)
    trims = [TrimEvery(model.device)] if str(model.device).startswith("cpu") else []
    if processors or trims:
        options["logits_processor"] = LogitsProcessorList([*processors, *trims])
    if stop_at_newline:
        options["stopping_criteria"] = StoppingCriteriaList([StopAtNewline(model, ids.shape[1])])
    with torch.no_grad(), model.hooks(dict(hooks or {})), \
            (model.skip_head() if skip_head else contextlib.nullcontext()):
        if sampling is not None:
            torch.manual_seed(sampling.seed)
        out = model.model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), **options)
    trim_host_memory(model.device)  # the grown key-value cache and step tensors, freed, back to the OS
    return out[:, ids.shape[1]:]


def generate_texts(model: ModelAdapter, prompts: Prompts, *, max_new_tokens: int, sampling: Sampling | None = None,
                   paths: int = 1, stop_at_newline: bool = False) -> list[str]:
    """The continuations of ``prompts`` as text (special tokens dropped): one per prompt,
    greedy, or ``paths`` per prompt (prompt-major) with ``sampling``. Attach a steering
    handle or other adapter hooks around the call to change what the model writes."""
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer")
    new = generate_ids(model, prompts, max_new_tokens=max_new_tokens, sampling=sampling, paths=paths,
                       stop_at_newline=stop_at_newline)
    return [model.tokenizer.decode(row, skip_special_tokens=True) for row in new]


__all__ = ["Prompts", "Sampling", "StopAtNewline", "eos_ids", "generate_ids", "generate_texts", "left_padded",
           "stop_length"]
