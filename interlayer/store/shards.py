"""Shard files: safetensors written atomically with a sha256, read back memory-mapped.

A shard holds one ``[rows, d]`` tensor per site plus ``meta.*`` int64 columns. It is
written atomically (a unique ``.part`` file beside it, fsynced and renamed over it, as
:func:`interlayer.io.files.write_atomic` does), so a shard either exists whole or not at
all. :func:`write_shard_file` streams the tensors' own memory to the file, hashing it on
the way (no serialised copy of the shard is built); its bytes are those of
``safetensors.torch.save`` (the same header, tensors ordered as safetensors orders them),
which :func:`encode_shard` still returns. Reading maps the file and views each tensor in
place (bf16 included), so opening a store costs no copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from safetensors.torch import save

from ..errors import CacheCorruptError
from ..io.files import WriteError, sha256_file, write_atomic_with

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64}
_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
_RAW = {torch.float32: torch.float32, torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.int64: torch.int64}
_ORDER = {"I64": 0, "F32": 1, "BF16": 2, "F16": 3}
"""safetensors' order of the tensors in a file: by dtype, the larger (in its enum) first, then by name."""
_PIECE = 4 * 2**20


class DiskBudgetError(WriteError):
    """Writing the next shard would exceed the disk budget or the free space."""


def encode_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes (contiguous CPU copies)."""
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


class ShardLayout(NamedTuple):
    """A shard as it will be written: the safetensors header, then each tensor's bytes in order."""

    header: bytes
    tensors: list[torch.Tensor]
    nbytes: int
    """The file's size."""


def shard_layout(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> ShardLayout:
    """The layout :func:`write_shard_file` writes (``safetensors.torch.save``'s, byte for
    byte): tensors of the store's dtypes (float32, float16, bfloat16, int64), made
    contiguous CPU tensors (no copy when they already are)."""
    items = []
    for name, tensor in tensors.items():
        if tensor.dtype not in _NAMES:
            raise CacheCorruptError(f"a shard holds {', '.join(map(str, _NAMES))} tensors, not {tensor.dtype} ({name})")
        items.append((name, tensor.detach().cpu().contiguous()))
    items.sort(key=lambda item: (_ORDER[_NAMES[item[1].dtype]], item[0]))
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, tensor in items:
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    head = len(text).to_bytes(8, "little") + text
    return ShardLayout(head, [t for _, t in items], len(head) + offset)


def write_shard_file(path: Path, layout: ShardLayout) -> str:
    """Write ``layout`` to ``path`` atomically, streaming each tensor's memory (hashed on the
    way); returns the file's sha256. On any failure (a full disk included) no partial file is
    left behind and :class:`~interlayer.io.files.WriteError` names the shard and the cause."""
    digest = hashlib.sha256(layout.header)

    def write(handle) -> None:
        _write_all(handle, memoryview(layout.header))
        for tensor in layout.tensors:
            if not tensor.numel():
                continue
            data = memoryview(tensor.view(_RAW[tensor.dtype]).numpy()).cast("B")
            for start in range(0, len(data), _PIECE):  # hashed and written while in the cache
                piece = data[start:start + _PIECE]
                digest.update(piece)
                _write_all(handle, piece)

    write_atomic_with(path, write, layout.nbytes, buffering=0, after_sync=_drop_cached_pages)
    return digest.hexdigest()


def _drop_cached_pages(descriptor: int) -> None:
    """Let the kernel drop the file's pages from its page cache (they are on disk after the
    fsync). A cache run writes far more than it rereads soon; without this the page cache
    grows by every shard, and on the machines measured (benchmarks/cache.py) writing into
    fresh page-cache memory costs about ten times the CPU of writing into recycled pages,
    which a writer thread on a busy CPU cannot hide. Advisory: a no-op where unsupported."""
    if hasattr(os, "posix_fadvise"):
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass


def _write_all(handle: io.FileIO, piece: memoryview) -> None:
    """Write all of ``piece`` (an unbuffered write may write less than asked)."""
    while piece:
        piece = piece[handle.write(piece) or 0:]


def read_shard(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Memory-map a shard; with ``expected_sha256``, verify it first and raise
    :class:`CacheCorruptError` naming the file when it does not match."""
    if not path.is_file():
        raise CacheCorruptError(f"shard {path} is missing")
    if expected_sha256 is not None:
        if sha256_file(path) != expected_sha256:
            raise CacheCorruptError(f"shard {path} is corrupt: its sha256 does not match the manifest")
    with open(path, "rb") as handle:
        n = int.from_bytes(handle.read(8), "little")
        try:
            header = json.loads(handle.read(n))
        except json.JSONDecodeError as err:
            raise CacheCorruptError(f"shard {path} has an unreadable header") from err
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        dtype = _NP_DTYPES[info["dtype"]]
        if end == begin:
            array = np.zeros(shape, dtype=dtype)
        else:
            array = np.memmap(path, dtype=dtype, mode="c", offset=base + begin, shape=shape)
        tensor = torch.from_numpy(array)
        out[name] = tensor.view(torch.bfloat16) if info["dtype"] == "BF16" else tensor
    return out
