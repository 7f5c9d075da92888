"""The batches of one store run, and how many tokens one forward pass may hold.

Unpacked sequences are batched ``batch_size`` at a time and sorted by length, so the
longest inputs land together: the quick report's 16 longest FLORES sentences (Burmese,
Khmer, Lao) are up to 1,055 tokens each under SmolLM2's English-centric tokenizer, a
16,880-token pass, and one block's MLP then holds ``[16880, d_mlp]`` tensors of 270 MiB
each at Llama-3.2-1B's width (the quick report's peak, found with
``benchmarks/peak_trace.py``). A batch whose padded size (sequences x longest) outgrows
:data:`FORWARD_MB` (256 MiB) holds of the forward pass's per-token activations is split into
smaller batches of the same order. The rows are the same (padding never reaches them;
the padding oracle checks it), only the number of forward calls grows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from ..model.adapter import ModelAdapter
from .inputs import TokenSequence, Tokenized, contexts_for_tokens, unpacked_batches
from .options import CollectOptions

FORWARD_MB = 256.0
"""MiB of transient forward activations one pass may hold when ``batch_tokens`` is not
given (separate from ``memory_mb``, which bounds the buffers rows are kept in)."""

SCORE_BYTES = 4
"""Bytes per attention score, float32 (the worst case: eager attention and CPU SDPA
upcast or materialise the ``[heads, seq, seq]`` scores)."""


def _text_config(model: ModelAdapter) -> Any:
    config = model.model.config
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def forward_bytes_per_token(model: ModelAdapter, seq_len: int) -> int:
    """An upper estimate of the transient bytes one token of a ``seq_len``-token sequence
    holds inside one block's forward pass: the MLP's gate, up, activation and product
    (``3 x d_mlp``, in the model's dtype), six residual-width tensors (norms, attention
    projections and outputs), and one row of attention scores per head (float32)."""
    config = _text_config(model)
    d = model.d_model
    d_mlp = int(getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d)
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None) or 1)
    item = model.dtype.itemsize
    return (3 * d_mlp + 6 * d) * item + heads * int(seq_len) * SCORE_BYTES


def forward_token_budget(model: ModelAdapter, forward_mb: float, seq_len: int) -> int:
    """Padded tokens of ``seq_len``-token sequences one forward pass may hold within
    ``forward_mb`` MiB of transient activations (:func:`forward_bytes_per_token`); at least
    one sequence's worth."""
    budget = int(forward_mb * 2**20 // forward_bytes_per_token(model, seq_len))
    return max(budget, int(seq_len))


def split_by_tokens(batches: Iterable[list[TokenSequence]], max_tokens: int | None = None,
                    model: ModelAdapter | None = None, forward_mb: float = FORWARD_MB) -> Iterator[list[TokenSequence]]:
    """Each batch, split in order into batches of at most ``max_tokens`` padded tokens
    (sequences x the batch's longest; default :func:`forward_token_budget` of ``model``
    and ``forward_mb``). A batch within the budget passes unchanged; a sequence longer than
    the budget runs alone."""
    if max_tokens is None and model is None:
        raise ValueError("split_by_tokens needs max_tokens or a model")
    for batch in batches:
        longest = max((len(s.ids) for s in batch), default=0)
        limit = max_tokens if model is None or max_tokens is not None else forward_token_budget(model, forward_mb, longest)
        per = max(1, limit // max(longest, 1))
        if len(batch) <= per:
            yield batch
            continue
        for start in range(0, len(batch), per):
            yield batch[start:start + per]


def plan_batches(model: ModelAdapter, inputs: Any, opts: CollectOptions) -> tuple[Iterator[list[TokenSequence]], int | None]:
    """Batches of sequences, and the number of sequences when known up front (an
    upper bound for packed contexts with a ``limit`` or ``tokens``, and for unpacked
    inputs longer than one window; ``None`` for a file or a generator). Both stream:
    unpacked inputs are tokenized and sorted by length one window at a time
    (:func:`~interlayer.store.inputs.unpacked_batches`), then split by padded tokens
    (:func:`split_by_tokens`)."""
    tok = Tokenized(model, opts.max_length)
    if opts.context_length is not None:
        contexts = tok.packed(inputs, opts.context_length, opts.text_field)
        limit = opts.limit
        if opts.tokens is not None:  # the first contexts of the stream that hold them, less those skipped
            limit = max(0, contexts_for_tokens(model, opts.tokens, opts.context_length) - opts.skip)
        if opts.skip or limit is not None:
            contexts = itertools.islice(contexts, opts.skip, None if limit is None else opts.skip + limit)

        keep = opts.keep_batches or (lambda _: True)

        def sequential() -> Iterator[list[TokenSequence]]:
            chunk: list[TokenSequence] = []
            number = opts.skip // opts.batch_size
            for context in contexts:
                chunk.append(context)
                if len(chunk) == opts.batch_size:
                    if keep(number):
                        yield chunk
                    chunk, number = [], number + 1
            if chunk and keep(number):
                yield chunk

        return sequential(), limit
    batches, total = unpacked_batches(tok, inputs, opts.batch_size, opts.text_field, opts.limit)
    return split_by_tokens(batches, opts.batch_tokens, model), total


__all__ = ["FORWARD_MB", "SCORE_BYTES", "forward_bytes_per_token", "forward_token_budget", "plan_batches", "split_by_tokens"]
