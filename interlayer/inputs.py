"""Inputs for the activation store: text or tokens in any of the accepted forms,
tokenized, optionally packed into fixed-length contexts, and batched by length.

Accepted forms: a list of strings; a list of token-id lists; a 2-D token tensor;
a local ``.txt`` (one document per non-empty line), ``.jsonl`` (a ``text_field``
per line, or a bare string) or ``.parquet`` file (a ``text_field`` column); and a
Hugging Face ``datasets.Dataset`` (its ``text_field`` column).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapter import ModelAdapter
from .errors import InterlayerError, choices

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet", ".devtest")


class EmptyInputError(InterlayerError):
    """The inputs hold no documents (or no tokens)."""


@dataclass
class Sequence_:
    """One tokenized sequence: its ids and, for packed contexts, the document of each token."""

    index: int
    ids: list[int]
    documents: list[int]


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


def data_fingerprint(data: Any) -> str:
    """A sha256 that changes when the inputs change (file bytes, or the values given)."""
    digest = hashlib.sha256()
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        with open(data, "rb") as handle:
            while chunk := handle.read(8 * 2**20):
                digest.update(chunk)
    elif isinstance(data, torch.Tensor):
        digest.update(data.cpu().numpy().tobytes())
    elif hasattr(data, "_fingerprint"):
        digest.update(str(data._fingerprint).encode())
    else:
        for item in data:
            digest.update(json.dumps(item if isinstance(item, str) else list(map(int, item))).encode())
            digest.update(b"\0")
    return digest.hexdigest()


def iter_documents(data: Any, text_field: str = "text") -> Iterator[str | list[int]]:
    """Yield documents (strings or token-id lists) from any accepted input form."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if not path.is_file():
            raise InterlayerError(f"input file {str(data)!r} does not exist; give a path to a "
                                  f"{', '.join(FILE_SUFFIXES)} file, a list of strings, or token ids")
        yield from _iter_file(path, text_field)
        return
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise InterlayerError(f"a token tensor must be [n_sequences, seq_len], got shape {tuple(data.shape)}")
        for row in data.tolist():
            yield row
        return
    if hasattr(data, "column_names") and hasattr(data, "__getitem__"):  # datasets.Dataset
        if text_field not in data.column_names:
            raise InterlayerError(f"dataset has no column {text_field!r}; columns: {choices(data.column_names)}")
        for row in data:
            yield row[text_field]
        return
    if isinstance(data, Iterable):
        for item in data:
            if isinstance(item, str) or (isinstance(item, Sequence) and all(isinstance(t, int) for t in item)):
                yield item if isinstance(item, str) else list(item)
            else:
                raise InterlayerError(f"inputs must be strings or lists of token ids, got an item of type {type(item).__name__}")
        return
    raise InterlayerError(f"unsupported input of type {type(data).__name__}; give a list of strings, token ids, "
                          f"a {', '.join(FILE_SUFFIXES)} file or a datasets.Dataset")


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise InterlayerError(f"{path} has no column {text_field!r}; columns: {choices(table.column_names)}")
        yield from (t for t in table.column(text_field).to_pylist() if t)
        return
    if suffix == ".jsonl":
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                if isinstance(item, str):
                    yield item
                elif isinstance(item, dict) and text_field in item:
                    yield item[text_field]
                else:
                    raise InterlayerError(f"{path}:{number} has no field {text_field!r}")
        return
    # .txt, .devtest and anything else: one document per non-empty line.
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


class Tokenized:
    """Turns documents into model-ready sequences."""

    def __init__(self, model: ModelAdapter, max_length: int | None = None) -> None:
        self.model = model
        self.tokenizer = model.tokenizer
        limit = getattr(model.model.config, "max_position_embeddings", None) or 2048
        self.max_length = int(max_length or limit)
        self.bos_id = bos_id_of(model)
        self.truncated = 0

    def encode(self, document: str | list[int], special: bool = True) -> list[int]:
        if isinstance(document, str):
            if self.tokenizer is None:
                raise InterlayerError(f"{self.model.name} has no tokenizer; pass token ids instead of text")
            return list(self.tokenizer(document, add_special_tokens=special).input_ids)
        return list(document)

    def sequences(self, data: Any, text_field: str = "text", limit: int | None = None) -> list[Sequence_]:
        """Each document as its own sequence (BOS added where the tokenizer adds one),
        truncated to ``max_length`` with a warning that counts them."""
        out = []
        for index, document in enumerate(iter_documents(data, text_field)):
            if limit is not None and index >= limit:
                break
            ids = self.encode(document)
            if len(ids) > self.max_length:
                self.truncated += 1
                ids = ids[: self.max_length]
            if ids:
                out.append(Sequence_(index, ids, [index] * len(ids)))
        if self.truncated:
            warnings.warn(f"{self.truncated} sequence(s) longer than {self.max_length} tokens were truncated", stacklevel=3)
        if not out:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        return out

    def packed(self, data: Any, context_length: int, text_field: str = "text") -> Iterator[Sequence_]:
        """Fixed-length contexts: BOS, then documents concatenated (each followed by EOS
        where the tokenizer has one), cut every ``context_length`` tokens. The last,
        shorter context is kept."""
        if context_length < 2:
            raise InterlayerError(f"context_length must be at least 2, got {context_length}")
        if context_length > self.max_length:
            raise InterlayerError(f"context_length {context_length} exceeds the model's {self.max_length} positions")
        eos = getattr(self.tokenizer, "eos_token_id", None) if self.tokenizer is not None else None
        head = [self.bos_id] if self.bos_id is not None else []
        body = context_length - len(head)
        ids: list[int] = []
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
            ids.extend(tokens)
            docs.extend([doc_index] * len(tokens))
            while len(ids) >= body:
                yield Sequence_(index, head + ids[:body], [docs[0]] * len(head) + docs[:body])
                index += 1
                del ids[:body], docs[:body]
        if not any_document:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        if ids:
            yield Sequence_(index, head + ids, [docs[0]] * len(head) + docs)


def make_batch(sequences: list[Sequence_], pad_id: int, padding_side: str, bos_id: int | None) -> Batch:
    """Pad sequences into a :class:`Batch` on the left or the right."""
    if padding_side not in ("left", "right"):
        raise InterlayerError(f"padding_side={padding_side!r}; valid choices: 'left', 'right'")
    width = max(len(s.ids) for s in sequences)
    b = len(sequences)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    mask = torch.zeros((b, width), dtype=torch.long)
    documents = torch.full((b, width), -1, dtype=torch.long)
    bos = torch.zeros((b, width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        n = len(seq.ids)
        span = slice(0, n) if padding_side == "right" else slice(width - n, width)
        input_ids[row, span] = torch.tensor(seq.ids)
        mask[row, span] = 1
        documents[row, span] = torch.tensor(seq.documents)
        if bos_id is not None and seq.ids[0] == bos_id:
            bos[row, span.start] = True
    index = torch.tensor([s.index for s in sequences], dtype=torch.long)
    return Batch(input_ids, mask, index, documents, bos)


def batches_by_length(sequences: list[Sequence_], batch_size: int) -> list[list[Sequence_]]:
    """Group sequences of similar length (longest first) to waste little on padding."""
    if batch_size < 1:
        raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
    ordered = sorted(sequences, key=lambda s: (-len(s.ids), s.index))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def bos_id_of(model: ModelAdapter) -> int | None:
    """The BOS id: the tokenizer's, else the model config's."""
    for candidate in (getattr(model.tokenizer, "bos_token_id", None), getattr(model.model.config, "bos_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return None


def pad_id_of(model: ModelAdapter) -> int:
    tok = model.tokenizer
    for candidate in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None),
                      getattr(model.model.config, "pad_token_id", None)):
        if candidate is not None:
            return int(candidate)
    return 0
