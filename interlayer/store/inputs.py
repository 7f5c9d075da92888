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

from ..model.adapter import ModelAdapter
from ..model.padding import pad_rows, row_span
from ..errors import InterlayerError, choices
from ..io.files import sha256_file
from ..io.json_records import json_lines

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet", ".devtest")


class EmptyInputError(InterlayerError):
    """The inputs hold no documents (or no tokens)."""


@dataclass
class TokenSequence:
    """One tokenized sequence: its ids and, for packed contexts, the document of each token."""

    index: int
    ids: list[int]
    documents: list[int]


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


def data_fingerprint(data: Any) -> str:
    """A sha256 that changes when the inputs change (file bytes, or the values given)."""
    if isinstance(data, (str, os.PathLike)) and Path(data).is_file():
        return sha256_file(data)
    if isinstance(data, (str, os.PathLike)) and Path(data).is_dir():  # a folder: its data files, in order
        return hashlib.sha256("".join(f"{p.name}:{sha256_file(p)};" for p in data_files(data)).encode()).hexdigest()
    digest = hashlib.sha256()
    if isinstance(data, torch.Tensor):
        digest.update(data.cpu().numpy().tobytes())
    elif hasattr(data, "_fingerprint"):
        digest.update(str(data._fingerprint).encode())
    else:
        for item in data:
            digest.update(json.dumps(item if isinstance(item, str) else list(map(int, item))).encode())
            digest.update(b"\0")
    return digest.hexdigest()


def iter_documents(data: Any, text_field: str = "text") -> Iterator[str | list[int]]:
    """Yield documents (strings or token-id lists) from any accepted input form.

    Malformed inputs (a file that is not UTF-8 text, a JSONL line that is not JSON, a
    text field that is not a string, token ids that are not integers) raise an
    :class:`~interlayer.errors.InterlayerError` naming the input and where it broke.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            for file in data_files(path):
                yield from _iter_file(file, text_field)
            return
        if not path.is_file():
            raise InterlayerError(f"input file {str(data)!r} does not exist; give a path to a "
                                  f"{', '.join(FILE_SUFFIXES)} file or a folder of them, a list of strings, or token ids")
        yield from _iter_file(path, text_field)
        return
    if isinstance(data, torch.Tensor):
        if data.dim() != 2:
            raise InterlayerError(f"a token tensor must be [n_sequences, seq_len], got shape {tuple(data.shape)}")
        if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
            raise InterlayerError(f"a token tensor must hold integer ids, got dtype {data.dtype}; "
                                  "pass input_ids as torch.long")
        for row in data.tolist():
            yield row
        return
    if hasattr(data, "column_names") and hasattr(data, "__getitem__"):  # datasets.Dataset
        if text_field not in data.column_names:
            raise InterlayerError(f"dataset has no column {text_field!r}; columns: {choices(data.column_names)}")
        for number, row in enumerate(data):
            yield _text(row[text_field], f"row {number} of the dataset's column {text_field!r}")
        return
    if isinstance(data, Iterable):
        for number, item in enumerate(data):
            if isinstance(item, str):
                yield item
            elif isinstance(item, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in item):
                yield list(item)
            elif isinstance(item, Sequence) and not isinstance(item, (bytes, bytearray)):
                bad = next(t for t in item if not (isinstance(t, int) and not isinstance(t, bool)))
                raise InterlayerError(f"input {number} holds {bad!r} of type {type(bad).__name__}; "
                                      "token ids must be Python ints")
            else:
                raise InterlayerError(f"inputs must be strings or lists of token ids, got an item of type {type(item).__name__}")
        return
    raise InterlayerError(f"unsupported input of type {type(data).__name__}; give a list of strings, token ids, "
                          f"a {', '.join(FILE_SUFFIXES)} file or a datasets.Dataset")


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InterlayerError(f"{where} is {type(value).__name__} {str(value)[:40]!r}, not text")
    return value


def _iter_file(path: Path, text_field: str) -> Iterator[str]:
    try:
        yield from _read_file(path, text_field)
    except UnicodeDecodeError as err:
        raise InterlayerError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} cannot be decoded); "
                              f"give a {', '.join(FILE_SUFFIXES)} file of UTF-8 text") from err


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise InterlayerError(f"{path} is a parquet file, and reading parquet needs pyarrow: "
                                  "pip install 'interlayer[data]' (or pip install pyarrow)") from None

        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises its own error types for a file that is not parquet
            raise InterlayerError(f"{path} is not a readable parquet file: {str(err).splitlines()[0]}") from err
        if text_field not in table.column_names:
            raise InterlayerError(f"{path} has no column {text_field!r}; columns: {choices(table.column_names)}")
        for number, value in enumerate(table.column(text_field).to_pylist()):
            if value:
                yield _text(value, f"{path} row {number} column {text_field!r}")
        return
    if suffix == ".jsonl":
        hint = f"; each line must be a JSON string or an object with a {text_field!r} field"
        with open(path, encoding="utf-8") as handle:
            for where, item in json_lines(handle, str(path), hint=hint):
                if isinstance(item, str):
                    yield item
                elif isinstance(item, dict) and text_field in item:
                    yield _text(item[text_field], f"{where} field {text_field!r}")
                else:
                    raise InterlayerError(f"{where} has no field {text_field!r}")
        return
    # .txt, .devtest and anything else: one document per non-empty line.
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if "\0" in line:
                raise InterlayerError(f"{path} holds NUL bytes: it looks like a binary file, not text; "
                                      f"give a {', '.join(FILE_SUFFIXES)} file of UTF-8 text")
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


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
        if isinstance(document, str):
            if self.tokenizer is None:
                raise InterlayerError(f"{self.model.name} has no tokenizer; pass token ids instead of text")
            return list(self.tokenizer(document, add_special_tokens=special).input_ids)
        ids = list(document)
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InterlayerError(f"token id {bad[0]} is out of range; {self.model.name} has ids 0..{self.vocab_size - 1}")
        return ids

    def sequences(self, data: Any, text_field: str = "text", limit: int | None = None) -> list[TokenSequence]:
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
                out.append(TokenSequence(index, ids, [index] * len(ids)))
        if self.truncated:
            warnings.warn(f"{self.truncated} sequence(s) longer than {self.max_length} tokens were truncated", stacklevel=3)
        if not out:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        return out

    def packed(self, data: Any, context_length: int, text_field: str = "text") -> Iterator[TokenSequence]:
        """Fixed-length contexts: BOS, then documents concatenated (each followed by EOS
        where the tokenizer has one), cut every ``context_length`` tokens. The last,
        shorter context is kept."""
        if context_length < 2:
            raise InterlayerError(f"context_length must be at least 2, got {context_length}")
        if context_length > self.max_length:
            raise InterlayerError(f"context_length {context_length} exceeds the model's {self.max_length} positions")
        eos = self.model.eos_token_id
        head = [self.bos_id] if self.bos_id is not None else []
        body = text_per_context(self.model, context_length)
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
                yield TokenSequence(index, head + ids[:body], [docs[0]] * len(head) + docs[:body])
                index += 1
                del ids[:body], docs[:body]
        if not any_document:
            raise EmptyInputError("the inputs contain no documents with tokens; nothing to collect")
        if ids:
            yield TokenSequence(index, head + ids, [docs[0]] * len(head) + docs)


def make_batch(sequences: list[TokenSequence], pad_id: int, padding_side: str, bos_id: int | None) -> Batch:
    """Pad sequences into a :class:`Batch` on the left or the right."""
    input_ids, mask = pad_rows([s.ids for s in sequences], pad_id, padding_side)
    documents, _ = pad_rows([s.documents for s in sequences], -1, padding_side)
    width = input_ids.shape[1]
    bos = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if bos_id is not None and seq.ids[0] == bos_id:
            bos[row, row_span(len(seq.ids), width, padding_side).start] = True
    index = torch.tensor([s.index for s in sequences], dtype=torch.long)
    return Batch(input_ids, mask, index, documents, bos)


def batches_by_length(sequences: list[TokenSequence], batch_size: int) -> list[list[TokenSequence]]:
    """Group sequences of similar length (longest first) to waste little on padding."""
    if batch_size < 1:
        raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
    ordered = sorted(sequences, key=lambda s: (-len(s.ids), s.index))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def data_files(folder: str | os.PathLike) -> list[Path]:
    """The data files of a folder (``.txt``, ``.jsonl``, ``.parquet``), sorted by name: read in this order."""
    return sorted(p for p in Path(folder).expanduser().iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)


def check_data_file(path: str | os.PathLike, flag: str = "--data", text_field: str = "text") -> Path:
    """Check a data file (or each file of a folder) before any model loads: it exists, and
    its first documents read as the format its extension says (UTF-8 text, JSON lines,
    parquet)."""
    file = Path(path).expanduser()
    if not file.exists():
        raise InterlayerError(f"{flag} {str(path)!r} does not exist; give a {', '.join(FILE_SUFFIXES)} file or a folder of them")
    if file.is_dir():
        files = data_files(file)
        if not files:
            raise InterlayerError(f"{flag} {str(path)!r} is a folder without any {', '.join(FILE_SUFFIXES)} file")
        for one in files:
            check_data_file(one, flag, text_field)
        return file
    if not file.is_file():
        raise InterlayerError(f"{flag} {str(path)!r} is not a file; give a {', '.join(FILE_SUFFIXES)} file")
    documents = _iter_file(file, text_field)
    try:
        for _ in range(64):  # reading a few documents catches binary files and malformed lines early
            if next(documents, None) is None:
                break
    finally:
        documents.close()
    return file
