"""The sparse training step of the selecting SAEs (TopK, BatchTopK, top-AFA): the
encoder's gradient only where the code (and the AuxK loss) reads it, after EleutherAI
sparsify's ``FusedEncoder``.

With ``b_dec`` folded into the encoder's bias,

    pre = x_in W_enc + (b_enc - b_dec W_enc)        (= (x_in - b_dec) W_enc + b_enc)

the code reads ``pre`` at a few entries ``(r, c)`` per token, and ``dL/dpre`` is zero
elsewhere. :class:`SparseEncoder` computes ``pre`` once without autograd, hands out
``pre`` at the chosen entries (and, for the AuxK loss, a dense block of the dead
latents' columns), and its backward forms, for the entry gradients ``g``::

    dL/db_enc[c]    = sum_(r,c) g                      (index_add_)
    dL/dW_enc[:, c] = sum_(r,c) g (x_in[r] - b_dec)    (a sparse product, or index_add_)
    dL/db_dec       = -W_enc dL/db_enc                 (a GEMV, not a [B, d_in] x [B, h] GEMM)

so neither ``f`` nor ``dL/dpre`` is ever a dense ``[B, h]`` tensor. The decoder sums
the chosen rows of ``W_dec`` (``embedding_bag`` with the values as per-sample weights).

The weight gradient: on the CPU a sparse CSR product ``x_in^T G`` (measured at B = 1,024,
d = 640, h = 10,240, k = 32: 18 ms, against 54 ms for ``index_add_`` and 45 ms for the
encoder's forward GEMM); elsewhere ``index_add_`` in chunks, as sparsify does on CUDA.

The AuxK block: on the CPU, where reading the number of dead latents costs nothing, the
AuxK loss reads the dense block ``pre[:, dead]`` (its 512 entries per token are 20% of
2,560 dead columns: a dense product over the block is 3x faster there than gathering
rows); on other devices, without a host sync, ``topk`` of ``pre`` with the live latents
masked gives a fixed number of entries, decoded by gathering rows, and the term is
multiplied by 0 when no latent is dead.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch.nn import functional as F

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")  # used read-only, one product

CHUNK = 1 << 16
"""Entries per ``index_add_`` chunk (bounds the ``[entries, d_in]`` contributions)."""
CPU_PATHS: bool | None = None
"""``None``: the CSR weight gradient and the compact AuxK block on the CPU only (the
default); ``True``/``False``: on every device / on none (tests check both on one)."""


def _cpu_path(device: torch.device) -> bool:
    return device.type == "cpu" if CPU_PATHS is None else CPU_PATHS


class Entries(NamedTuple):
    """The entries of a sparse ``[B, h]`` code, row-major (token by token)."""

    rows: torch.Tensor
    """``[nnz]`` the token of each entry (non-decreasing)."""
    cols: torch.Tensor
    """``[nnz]`` the latent of each entry."""
    starts: torch.Tensor
    """``[B + 1]`` where each token's entries start (CSR row pointers; the last is nnz)."""


def fixed_entries(indices: torch.Tensor) -> Entries:
    """The :class:`Entries` of ``[B, k]`` latent indices (``k`` per token, as TopK's)."""
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    return Entries(rows, indices.reshape(-1), torch.arange(0, n * k + 1, k, device=indices.device))


def counted_entries(k: torch.Tensor, cols: torch.Tensor) -> Entries:
    """The :class:`Entries` of ``k[b]`` latents per token, ``cols`` row-major."""
    rows = torch.repeat_interleave(torch.arange(k.numel(), device=k.device), k, output_size=cols.numel())
    return Entries(rows, cols, torch.cat([k.new_zeros(1), k.cumsum(0)]))


def flat_entries(flat: torch.Tensor, h: int) -> Entries:
    """The :class:`Entries` of indices into a flattened ``[B, h]`` code (BatchTopK's), any order."""
    flat = flat.sort().values  # r * h + c: sorted by token, then latent
    rows, cols = torch.div(flat, h, rounding_mode="floor"), flat % h
    # B is not known from the entries alone; the caller's batch is rows' bound
    return Entries(rows, cols, flat.new_empty(0))


def with_starts(entries: Entries, n: int) -> Entries:
    """``entries`` with their CSR row pointers for a batch of ``n`` tokens."""
    if entries.starts.numel() == n + 1:
        return entries
    starts = torch.searchsorted(entries.rows, torch.arange(n + 1, device=entries.rows.device))
    return Entries(entries.rows, entries.cols, starts)


@torch.no_grad()
def pre_activations(x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
    """``x_in W_enc + (b_enc - b_dec W_enc)`` without autograd (one GEMM with its bias)."""
    return torch.addmm(b_enc - b_dec @ W_enc, x_in, W_enc)


def _weight_grad(x_in: torch.Tensor, entries: Entries, g: torch.Tensor, h: int, csr: bool) -> torch.Tensor:
    """``sum_(r,c) g x_in[r]`` into column ``c`` of a ``[d, h]`` tensor."""
    if csr:
        code = torch.sparse_csr_tensor(entries.starts, entries.cols, g, (x_in.shape[0], h), check_invariants=False)
        return x_in.t() @ code
    out = x_in.new_zeros(h, x_in.shape[1])
    for lo in range(0, g.numel(), CHUNK):
        part = slice(lo, lo + CHUNK)
        out.index_add_(0, entries.cols[part], g[part].unsqueeze(1) * x_in[entries.rows[part]])
    return out.t()


class SparseEncoder(torch.autograd.Function):
    """``pre`` at ``entries`` (and the dense column block ``pre[:, block]``), with the
    sparse backward of the module docstring. ``pre`` comes from :func:`pre_activations`."""

    @staticmethod
    def forward(ctx, x_in, W_enc, b_enc, b_dec, pre, entries: Entries, block, csr: bool):
        ctx.save_for_backward(x_in, W_enc, b_dec, entries.rows, entries.cols, entries.starts, block)
        ctx.csr = csr
        values = pre[entries.rows, entries.cols]
        return values, pre.index_select(1, block)

    @staticmethod
    def backward(ctx, g_values, g_block):
        x_in, W_enc, b_dec, rows, cols, starts, block = ctx.saved_tensors
        h = W_enc.shape[1]
        g_values = g_values.contiguous()
        g_bias = torch.zeros(h, dtype=W_enc.dtype, device=W_enc.device).index_add_(0, cols, g_values)
        g_weight = _weight_grad(x_in, Entries(rows, cols, starts), g_values, h, ctx.csr and starts.numel() > 0)
        if block.numel():
            g_weight = g_weight.contiguous()
            g_weight.index_add_(1, block, x_in.t() @ g_block)
            g_bias.index_add_(0, block, g_block.sum(0))
        g_weight = g_weight.contiguous().addr_(b_dec, g_bias, alpha=-1)  # the folded bias's share: -b_dec (x) g_bias
        return None, g_weight, g_bias, -(W_enc @ g_bias), None, None, None, None


def encode_entries(x_in: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor,
                   pre: torch.Tensor, entries: Entries, block: torch.Tensor | None = None,
                   csr: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``pre`` at ``entries`` and ``pre[:, block]``, differentiable in the weights with the
    sparse backward. ``csr`` (default: on the CPU) forms the weight gradient as a sparse
    product (``entries`` row-major with their ``starts``), else with ``index_add_``."""
    if block is None:
        block = torch.zeros(0, dtype=torch.long, device=pre.device)
    if csr is None:
        csr = _cpu_path(pre.device)
    if csr:
        entries = with_starts(entries, pre.shape[0])
    return SparseEncoder.apply(x_in, W_enc, b_enc, b_dec, pre, entries, block, csr)


def decode_entries(W_dec: torch.Tensor, b_dec: torch.Tensor | None, entries: Entries, values: torch.Tensor,
                   n: int) -> torch.Tensor:
    """``sum_(r,c) values W_dec[c]`` per token (+ ``b_dec``): the chosen decoder rows,
    gathered (``embedding_bag``), never a dense code."""
    entries = with_starts(entries, n)
    out = F.embedding_bag(entries.cols, W_dec, entries.starts[:-1], mode="sum", per_sample_weights=values)
    return out if b_dec is None else out + b_dec


def row_norms(entries: Entries, values: torch.Tensor, n: int) -> torch.Tensor:
    """``||f_b||`` of the sparse code (0, with a zero gradient, for a token without entries)."""
    sq = values.new_zeros(n).index_add_(0, entries.rows, values.square())
    positive = sq > 0
    return torch.where(positive, sq, torch.ones_like(sq)).sqrt() * positive


def fired(entries: Entries, values: torch.Tensor, h: int) -> torch.Tensor:
    """``[h]`` whether each latent fired (``f > 0``) for any token, from the entries alone."""
    return values.new_zeros(h).index_add_(0, entries.cols, (values > 0).to(values.dtype)) > 0


class AuxEntries(NamedTuple):
    """The AuxK loss's inputs: dead entries (``entries`` / ``block``) and the live mask."""

    entries: Entries | None
    """Fixed-size entries (``topk`` of ``pre`` with the live latents at ``-inf``)."""
    block: torch.Tensor | None
    """The dead latents' indices (the CPU's dense block)."""
    any_dead: torch.Tensor
    """``1.0`` when a latent is dead, else ``0.0`` (a device scalar)."""


@torch.no_grad()
def dead_entries(pre: torch.Tensor, dead: torch.Tensor, aux_k: int, compact: bool | None = None) -> AuxEntries:
    """The dead latents the AuxK loss reads: their dense column block (``compact``, the
    CPU's default: ``dead.nonzero()``, a host sync elsewhere), or, sync-free, the
    ``min(aux_k, h)`` largest of ``pre`` with the live latents masked (live ones picked
    when fewer than ``aux_k`` are dead are zeroed by :func:`aux_reconstruction`)."""
    if compact is None:
        compact = _cpu_path(pre.device)
    any_dead = dead.any().to(pre.dtype)
    if compact:
        return AuxEntries(None, dead.nonzero().squeeze(1), any_dead)
    masked = pre.masked_fill(~dead, -torch.inf)
    indices = masked.topk(min(aux_k, pre.shape[1]), dim=-1, sorted=False).indices
    return AuxEntries(fixed_entries(indices), None, any_dead)


def aux_reconstruction(W_dec: torch.Tensor, aux: AuxEntries, values: torch.Tensor, block: torch.Tensor,
                       dead: torch.Tensor, aux_k: int) -> torch.Tensor:
    """``e_hat``: the ``aux_k`` largest ``ReLU(pre)`` of the dead latents per token, decoded
    (the AuxK loss of Gao et al. 2024). ``values`` are ``pre`` at ``aux.entries``; ``block``
    is ``pre[:, aux.block]``."""
    if aux.block is not None:
        if aux.block.numel() == 0:
            return block.new_zeros(block.shape[0], W_dec.shape[1])
        acts = torch.relu(block)
        top, indices = acts.topk(min(aux_k, acts.shape[-1]), dim=-1, sorted=False)
        return torch.zeros_like(acts).scatter(-1, indices, top) @ W_dec.index_select(0, aux.block)
    acts = torch.relu(values) * dead[aux.entries.cols].to(values.dtype)
    return decode_entries(W_dec, None, aux.entries, acts, aux.entries.starts.numel() - 1)


__all__ = ["Entries", "AuxEntries", "SparseEncoder", "pre_activations", "encode_entries", "decode_entries",
           "fixed_entries", "counted_entries", "flat_entries", "with_starts", "row_norms", "fired", "dead_entries",
           "aux_reconstruction", "CHUNK", "CPU_PATHS"]
