"""Shard files: safetensors written atomically with a sha256, read back memory-mapped.

A shard holds one ``[rows, d]`` tensor per site plus ``meta.*`` int64 columns. It is
written atomically (:func:`interlayer.io.files.write_atomic`), so a shard either exists
whole or not at all. Reading maps the file and views each tensor in place (bf16 included),
so opening a store costs no copies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save

from ..errors import CacheCorruptError
from ..io.files import WriteError, sha256_file

_NP_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64}


class DiskBudgetError(WriteError):
    """Writing the next shard would exceed the disk budget or the free space."""


def encode_shard(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes (contiguous CPU copies)."""
    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)


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
