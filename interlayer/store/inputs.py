"""Inputs for the activation store: text or tokens in any of the accepted forms,
tokenized, optionally packed into fixed-length contexts, and batched by length.

Everything streams: documents are read and tokenized lazily, and unpacked sequences are
sorted by length within a window of :data:`WINDOW_BATCHES` batches (not globally), so the
first batch comes after one window and memory is O(window), not O(inputs). A token tensor
is validated in one tensor operation and batched as tensors, never as Python lists.

The accepted forms are read by :mod:`interlayer.store.documents` (its names are
re-exported here).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..model.adapter import ModelAdapter
from ..model.padding import flatten_rows, pad_flat
from ..errors import InterlayerError
from .documents import (FILE_SUFFIXES, check_data_file, data_files, data_fingerprint, iter_documents, known_length,
                        token_tensor)

WINDOW_BATCHES = 64
"""Unpacked sequences are sorted by length within windows of this many batches: padding
stays low, and tokenization runs at most one window ahead of the forward pass."""


class EmptyInputError(InterlayerError):
    """The inputs hold no documents (or no tokens)."""


@dataclass
class TokenSequence:
    """One tokenized sequence: its ids and, for packed contexts, the document of each token.

    ``ids`` and ``documents`` are lists of ints, or 1-D long tensors for the rows of a
    token tensor (which are never turned into lists)."""

    index: int
    ids: list[int] | torch.Tensor
    documents: list[int] | torch.Tensor


Sequence_ = TokenSequence
"""The old name of :class:`TokenSequence` (one release)."""


@dataclass
class Batch:
    """A padded batch of sequences, as the forward pass and the selections see it."""

    input_ids: torch.Tensor
    """``[b, s]`` token ids, padded."""
    attention_mask: torch.Tensor
    """``[b, s]`` 1 for real tokens."""
    sequence_index: torch.Tensor
    """``[b]`` which input sequence (or packed context) each row is."""
    documents: torch.Tensor
    """``[b, s]`` the document each token came from (-1 for padding)."""
    bos: torch.Tensor
    """``[b, s]`` True where the token is the sequence's leading BOS."""

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def text_per_context(model: ModelAdapter, context_length: int) -> int:
    """Text tokens in one full packed context (:meth:`Tokenized.packed`): ``context_length``,
    less the leading BOS where the model has one."""
    return context_length - (1 if model.bos_token_id is not None else 0)


def contexts_for_tokens(model: ModelAdapter, tokens: int, context_length: int, whole: bool = False) -> int:
    """How many packed contexts of ``context_length`` hold ``tokens`` text tokens, by the
    store's packing rule (BOS first, then text): ``max(1, ceil(tokens / n))`` with
    ``n = context_length - 1`` on a model with a BOS token, ``n = context_length`` without;
    with ``whole``, only the contexts the budget fills completely, ``max(1, tokens // n)``.
    The one place this arithmetic lives (``collect(..., tokens=)`` uses it)."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise InterlayerError(f"tokens must be a whole number of at least 0, got {tokens!r}")
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise InterlayerError(f"context_length must be an integer of at least 2, got {context_length!r}")
    per_context = text_per_context(model, context_length)
    return max(1, tokens // per_context if whole else -(-tokens // per_context))  # exact integer floor / ceil


class Tokenized:
    """Turns documents into model-ready sequences."""

    def __init__(self, model: ModelAdapter, max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        if max_length is not None and max_length < 1:
            raise InterlayerError(f"max_length must be at least 1, got {max_length}")
        self.max_length = int(max_length or model.max_positions)
        self.bos_id = model.bos_token_id
        self.vocab_size = model.vocab_size
        self.truncated = 0

    def encode(self, document: str | list[int], special: bool = True) -> list[int]:
        """A document's token ids: text through the tokenizer (with its special tokens when
        ``special``), token ids checked against the vocabulary (a list is returned itself,
        not a copy: the store hands it the fresh lists of :func:`iter_documents`)."""
        if isinstance(document, str):
            if self.tokenizer is None:
                raise InterlayerError(f"{self.model.name} has no tokenizer; pass token ids instead of text")
            return list(self.tokenizer(document, add_special_tokens=special).input_ids)
        ids = document if type(document) is list else list(document)  # iter_documents' lists are fresh copies
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):  # builtins: no Python loop unless one is bad
            self._out_of_range(next(t for t in ids if not 0 <= t < self.vocab_size))
        return ids

    def check_ids(self, ids: torch.Tensor) -> None:
        """Raise naming the first id (in row-major order) outside ``0..vocab_size - 1``:
        one tensor operation over all of ``ids``."""
        bad = ((ids < 0) | (ids >= self.vocab_size)).reshape(-1)
        if bool(bad.any()):
            self._out_of_range(int(ids.reshape(-1)[int(bad.nonzero()[0, 0])]))

    def _out_of_range(self, token: int) -> None:
        raise InterlayerError(f"token id {token} is out of range; {self.model.name} has ids 0..{self.vocab_size - 1}")

    def sequences(self, data: Any, text_field: str = "text", limit: int | None = None) -> list[TokenSequence]:
        """Each document as its own sequence, all in a list (:meth:`iter_sequences` streams them)."""
        return list(self.iter_sequences(data, text_field, limit))

    def iter_sequences(self, data: Any, text_field: str = "text", limit: int | None = None) -> Iterator[TokenSequence]:
        """Each document as its own sequence (BOS added where the tokenizer adds one), read
        and tokenized lazily, truncated to ``max_length``; at the end, a warning counts
        the truncated ones, and :class:`EmptyInputError` is raised if none had tokens.
        The rows of a token tensor come as tensors, checked once for the whole tensor."""
        if isinstance(data, torch.Tensor):
            yield from self._tensor_sequences(data, limit)
            return
        found = False
        for index, document in enumerate(iter_documents(data, text_field)):
            if limit is not None and index >= limit:
                break
            ids = self.encode(document)
            if len(ids) > self.max_length:
                self.truncated += 1
                ids = ids[: self.max_length]
            if ids:
                found = True
                yield TokenSequence(index, ids, [index] * len(ids))
        self._warn_truncated()
        if not found:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")

    def _tensor_sequences(self, data: torch.Tensor, limit: int | None) -> Iterator[TokenSequence]:
        data = token_tensor(data)[:limit]
        self.check_ids(data)
        if data.shape[1] > self.max_length:
            self.truncated += int(data.shape[0])
            data = data[:, : self.max_length]
        self._warn_truncated()
        if not data.numel():
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        data = data.long()
        width = int(data.shape[1])
        for index in range(int(data.shape[0])):
            yield TokenSequence(index, data[index], torch.full((width,), index, dtype=torch.long))

    def _warn_truncated(self) -> None:
        if self.truncated:
            warnings.warn(f"{self.truncated} sequence(s) longer than {self.max_length} tokens were truncated",
                          stacklevel=3)

    def packed(self, data: Any, context_length: int, text_field: str = "text") -> Iterator[TokenSequence]:
        """Fixed-length contexts: BOS, then documents concatenated (each followed by EOS
        where the tokenizer has one), cut every ``context_length`` tokens. The last,
        shorter context is kept. Linear in the tokens: a long document is cut at a moving
        offset, never by deleting from the front of a list."""
        if context_length < 2:
            raise InterlayerError(f"context_length must be at least 2, got {context_length}")
        if context_length > self.max_length:
            raise InterlayerError(f"context_length {context_length} exceeds the model's {self.max_length} positions")
        eos = self.model.eos_token_id
        head = [self.bos_id] if self.bos_id is not None else []
        body = text_per_context(self.model, context_length)
        ids: list[int] = []  # pending tokens (fewer than body between documents) and their documents
        docs: list[int] = []
        index = 0
        any_document = False
        for doc_index, document in enumerate(iter_documents(data, text_field)):
            tokens = self.encode(document, special=False)
            if eos is not None and isinstance(document, str):
                tokens.append(eos)
            if not tokens:
                continue
            any_document = True
            if ids:
                ids.extend(tokens)
            else:
                ids = tokens  # a fresh list (encode's), not copied again
            docs.extend(itertools.repeat(doc_index, len(tokens)))
            start = 0
            while len(ids) - start >= body:
                stop = start + body
                yield TokenSequence(index, head + ids[start:stop], [docs[start]] * len(head) + docs[start:stop])
                index, start = index + 1, stop
            del ids[:start], docs[:start]  # once per document: what stays is shorter than body
        if not any_document:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        if ids:
            yield TokenSequence(index, head + ids, [docs[0]] * len(head) + docs)


def make_batch(sequences: list[TokenSequence], pad_id: int, padding_side: str, bos_id: int | None) -> Batch:
    """Pad sequences into a :class:`Batch` on the left or the right, with tensor operations
    (one concatenation of the rows, one masked write; no loop over rows or tokens)."""
    flat, lengths = flatten_rows([s.ids for s in sequences])
    input_ids, mask = pad_flat(flat, lengths, pad_id, padding_side)
    documents, _ = pad_flat(flatten_rows([s.documents for s in sequences])[0], lengths, -1, padding_side)
    width = int(input_ids.shape[1])
    bos = torch.zeros((len(sequences), width), dtype=torch.bool)
    if bos_id is not None and width:
        firsts = flat[(lengths.cumsum(0) - lengths).clamp(max=max(int(flat.numel()) - 1, 0))]
        leading = (firsts == bos_id) & (lengths > 0)
        columns = torch.zeros_like(lengths) if padding_side == "right" else width - lengths
        bos[leading.nonzero()[:, 0], columns[leading]] = True
    index = torch.tensor([s.index for s in sequences], dtype=torch.long)
    return Batch(input_ids, mask, index, documents, bos)


def batches_by_length(sequences: list[TokenSequence], batch_size: int) -> list[list[TokenSequence]]:
    """Group sequences of similar length (longest first) to waste little on padding."""
    if batch_size < 1:
        raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
    ordered = sorted(sequences, key=lambda s: (-len(s.ids), s.index))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def windowed_batches(sequences: Iterable[TokenSequence], batch_size: int,
                     window: int | None = None) -> Iterator[list[TokenSequence]]:
    """:func:`batches_by_length` within consecutive windows of ``window`` (default
    :data:`WINDOW_BATCHES`) batches' worth of sequences: the same batches as a global
    sort when the inputs fit in one window, and never more than one window read ahead."""
    if batch_size < 1:
        raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
    stream, size = iter(sequences), (window or WINDOW_BATCHES) * batch_size
    while chunk := list(itertools.islice(stream, size)):
        yield from batches_by_length(chunk, batch_size)


def unpacked_batches(tok: Tokenized, data: Any, batch_size: int, text_field: str = "text",
                     limit: int | None = None) -> tuple[Iterator[list[TokenSequence]], int | None]:
    """Batches of unpacked sequences (:func:`windowed_batches`), and how many sequences
    there are: exact when the inputs fit in the first window (read here, so an input with
    no tokens raises :class:`EmptyInputError` before any model pass), else
    :func:`known_length` (``None`` for a file or a generator)."""
    if batch_size < 1:
        raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
    sequences = tok.iter_sequences(data, text_field, limit)
    size = WINDOW_BATCHES * batch_size
    first = list(itertools.islice(sequences, size))
    if not first:  # an input that ran out without a sequence raised EmptyInputError above
        raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
    total = len(first) if len(first) < size else known_length(data, limit)
    rest = windowed_batches(sequences, batch_size) if len(first) == size else iter(())
    return itertools.chain(batches_by_length(first, batch_size), rest), total




__all__ = ["Batch", "EmptyInputError", "FILE_SUFFIXES", "TokenSequence", "Tokenized", "WINDOW_BATCHES",
           "batches_by_length", "check_data_file", "contexts_for_tokens", "data_files", "data_fingerprint",
           "iter_documents", "known_length", "make_batch", "text_per_context", "token_tensor", "unpacked_batches",
           "windowed_batches"]
