"""Loading an SAE allocates its tensors once (SAE.empty + load_tensors with assign): no
random initialisation beside the file's tensors, which for a Gemma Scope 1M-latent SAE
would double the memory of the load."""

from __future__ import annotations

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig, load


def test_empty_allocates_nothing_and_load_tensors_fills_it_in_float32():
    cfg = SAEConfig(d_in=8, d_sae=16, arch="jumprelu")
    empty = SAE.empty(cfg)
    assert all(t.is_meta for t in empty.state_dict().values())
    source = SAE(cfg, seed=3)
    state = {k: v.to(torch.bfloat16) if k == "W_dec" else v.t().contiguous().t() if k == "W_enc" else v
             for k, v in source.state_dict().items()}
    empty.load_tensors(state, "test")
    for name, tensor in empty.state_dict().items():
        assert not tensor.is_meta and tensor.dtype == torch.float32 and tensor.is_contiguous(), name
    assert isinstance(empty.W_enc, torch.nn.Parameter) and empty.W_enc.requires_grad
    assert torch.equal(empty.W_enc, source.W_enc)
    assert torch.equal(empty.W_dec, source.W_dec.to(torch.bfloat16).float())
    with torch.no_grad():
        source.W_dec.copy_(source.W_dec.to(torch.bfloat16).float())
        x = torch.randn(5, 8)
        assert torch.equal(empty(x).x_hat, source(x).x_hat)


def test_a_loaded_file_keeps_the_file_tensors_without_a_copy(tmp_path, monkeypatch):
    from interlayer.saes import sae as sae_module

    sae = SAE(SAEConfig(d_in=8, d_sae=16, arch="topk", k=4), seed=1)
    sae.save(tmp_path / "sae")
    read = {}
    real_load_file = sae_module.load_file
    monkeypatch.setattr(sae_module, "load_file", lambda *a, **k: read.update(real_load_file(*a, **k)) or read)
    loaded = load(tmp_path / "sae", verify=False)
    assert loaded.W_enc.data_ptr() == read["W_enc"].data_ptr()  # one allocation: the file's
    assert loaded.W_dec.data_ptr() == read["W_dec"].data_ptr()
    with torch.no_grad():
        x = torch.randn(6, 8)
        assert torch.equal(loaded(x).x_hat, sae(x).x_hat)


def test_a_misfitting_file_into_an_empty_sae_is_still_one_error():
    empty = SAE.empty(SAEConfig(d_in=8, d_sae=16, arch="relu"))
    with pytest.raises(InterlayerError, match=r"shape mismatches \['W_enc: \(8, 4\) vs \(8, 16\)'"):
        empty.load_tensors({"W_enc": torch.zeros(8, 4), "b_enc": torch.zeros(16), "W_dec": torch.zeros(16, 8),
                            "b_dec": torch.zeros(8)}, "bad.safetensors")
