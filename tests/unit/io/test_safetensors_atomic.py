"""write_safetensors_atomic: the file safetensors' save would write, streamed from the
tensors (no bytes copy), renamed into place; a failure leaves the old file and no part file."""

from __future__ import annotations

import errno

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from interlayer.io.files import WriteError, write_safetensors_atomic


def _tensors():
    gen = torch.Generator().manual_seed(0)
    return {"W_enc": torch.randn(8, 32, generator=gen), "b": torch.arange(5, dtype=torch.int64),
            "h": torch.randn(3, generator=gen).to(torch.bfloat16)}


def test_the_file_is_the_one_save_writes(tmp_path):
    tensors, path = _tensors(), tmp_path / "deep" / "sae.safetensors"
    write_safetensors_atomic(path, tensors, metadata={"format": "x"})
    assert path.read_bytes() == save(tensors, metadata={"format": "x"})
    back = load_file(str(path))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"format": "x"}
    assert [p.name for p in path.parent.iterdir()] == ["sae.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_part(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "sae.safetensors"
    write_safetensors_atomic(path, {"a": torch.ones(2)})
    before = path.read_bytes()

    def full_disk(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(WriteError, match=r"could not write .*sae\.safetensors .*No space left on device"):
        write_safetensors_atomic(path, _tensors())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sae.safetensors"]


def test_a_non_contiguous_tensor_is_refused_without_a_part_file(tmp_path):
    with pytest.raises(ValueError):
        write_safetensors_atomic(tmp_path / "x.safetensors", {"t": torch.randn(4, 6).t()})
    assert not any(tmp_path.iterdir())
