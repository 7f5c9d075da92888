"""Documents from any accepted input form, read lazily: a list of strings; a list of
token-id lists; a 2-D token tensor; a local ``.txt`` (one document per non-empty line),
``.jsonl`` (a ``text_field`` per line, or a bare string) or ``.parquet`` file (a
``text_field`` column), or a folder of them; and a Hugging Face ``datasets.Dataset``
(its ``text_field`` column). Tokenization is :mod:`interlayer.store.inputs`."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InterlayerError, choices
from ..io.files import sha256_file
from ..io.json_records import json_lines

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet", ".devtest")


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
        for row in token_tensor(data):
            yield row.tolist()
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
            elif isinstance(item, (list, tuple, range)) and set(map(type, item)) <= {int}:  # C-speed type check
                yield list(item)
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


def token_tensor(data: torch.Tensor) -> torch.Tensor:
    """A token tensor checked for shape (``[n_sequences, seq_len]``) and an integer dtype, on the CPU."""
    if data.dim() != 2:
        raise InterlayerError(f"a token tensor must be [n_sequences, seq_len], got shape {tuple(data.shape)}")
    if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
        raise InterlayerError(f"a token tensor must hold integer ids, got dtype {data.dtype}; "
                              "pass input_ids as torch.long")
    return data.cpu()


def known_length(data: Any, limit: int | None = None) -> int | None:
    """How many documents ``data`` holds when it says so without being read (a list, a
    tensor, a dataset; not a file or a generator), at most ``limit``: an upper bound on
    the sequences, for a progress bar."""
    if isinstance(data, torch.Tensor):
        n: int | None = int(data.shape[0]) if data.dim() else None
    elif isinstance(data, (str, bytes, os.PathLike)) or not hasattr(data, "__len__"):
        n = None
    else:
        n = len(data)
    if n is None:
        return limit
    return n if limit is None else min(n, limit)


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


__all__ = ["FILE_SUFFIXES", "check_data_file", "data_files", "data_fingerprint", "iter_documents", "known_length",
           "token_tensor"]
