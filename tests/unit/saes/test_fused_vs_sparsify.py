"""The sparse SAE step's encoder against the peer that implements the same thing:
EleutherAI sparsify's ``FusedEncoder`` (its TopK SAE's encoder with the ``index_add_``
backward). Same weights, same selected latents: the same values and the same gradients of
``W_enc``, ``b_enc`` and ``b_dec`` (sparsify subtracts ``b_dec`` from its input; interlayer
folds it into the bias)."""

from __future__ import annotations

import os

import pytest
import torch

from interlayer.saes import fused_encoder as fused

pytestmark = pytest.mark.peers

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its Triton decoder needs CUDA; the encoder is torch
from sparsify import fused_encoder as sparsify_fused  # noqa: E402  (the peer, installed by make install)


@pytest.mark.parametrize("csr", [True, False])
def test_sparse_encoder_equals_sparsify_fused_encoder(csr):
    gen = torch.Generator().manual_seed(0)
    n, d, h, k = 48, 24, 160, 8
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    W_enc = (torch.randn(d, h, generator=gen, dtype=torch.float64) * 0.2).requires_grad_()
    b_enc = (torch.rand(h, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()  # selected values positive
    b_dec = torch.randn(d, generator=gen, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(n, k, generator=gen, dtype=torch.float64)

    # sparsify: relu((x - b_dec) W + b), top-k, backward by index_add_ (SparseCoder.encode's order)
    weight = W_enc.detach().t().contiguous().requires_grad_()
    bias = b_enc.detach().clone().requires_grad_()
    b_dec_s = b_dec.detach().clone().requires_grad_()
    out = sparsify_fused.fused_encoder(x - b_dec_s, weight, bias, k, "topk")
    assert bool((out.top_acts > 0).all())
    (out.top_acts * upstream).sum().backward()

    # interlayer: pre = x W_enc + (b_enc - b_dec W_enc), the same latents, the sparse backward
    pre = fused.pre_activations(x, W_enc, b_enc, b_dec)
    assert set(map(tuple, torch.relu(pre).topk(k).indices.sort().values.tolist())) == \
        set(map(tuple, out.top_indices.sort().values.tolist()))
    entries = fused.fixed_entries(out.top_indices)
    values, _ = fused.encode_entries(x, W_enc, b_enc, b_dec, pre, entries, csr=csr)
    torch.testing.assert_close(values, out.top_acts.reshape(-1), rtol=1e-12, atol=1e-12)
    (values * upstream.reshape(-1)).sum().backward()

    torch.testing.assert_close(W_enc.grad, weight.grad.t(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b_enc.grad, bias.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b_dec.grad, b_dec_s.grad, rtol=1e-10, atol=1e-12)
