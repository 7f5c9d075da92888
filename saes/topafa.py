"""Top-AFA selection (Lee et al. 2025, "Evaluating and Designing Sparse Autoencoders
by Approximating Quasi-Orthogonality").

Per token, with target ``A = ||x - b_dec||`` and scores ``s_i = (a_i ||W_dec,i||)^2``:
sort the scores in descending order, take cumulative sums ``C_j`` and keep the
``k = argmin_{j >= 1} | sqrt(C_j) - A |`` largest (ties: the smallest ``j``).

:func:`select_sorted` is that rule written plainly with a full sort (the reference).
:func:`select` gives the same answer without sorting all ``h`` latents: because
``sqrt(C_j)`` never decreases, the best ``j`` is at or just before the first ``j``
where ``sqrt(C_j) >= A``. It takes the ``m`` largest scores with ``topk``; a row is
settled when its ``m``-prefix already reaches ``A`` (or ``m = h``). The unsettled
rows are retried with ``4m`` candidates; once ``m`` would reach ``h / 4`` the remaining
rows are fully sorted instead (``topk`` of that many is no faster): an exact fallback.

:func:`entries` returns the kept latents directly as row-major ``(k, cols, offsets)``
with no ``[B, h]`` mask: on CUDA a fused Triton kernel per row (threshold search on the
scores' bits, a sort of the ~k winners only; :mod:`interlayer.saes.topafa_triton`), on
the CPU :func:`entries_torch` (one ``topk``; a threshold search and one more ``topk`` for
the rows it does not settle).

The authors' code sets ``C_h = 1e8`` as a sentinel, which excludes ``k = h``; both
functions here allow every ``k`` from 1 to ``h`` unless ``sentinel=True`` (the
authors-exact mode), which does as they do. The two differ only for a token that
needs every latent.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Selection(NamedTuple):
    """Which latents a token keeps."""

    keep: torch.Tensor
    """``[B, h]`` bool mask of the kept latents."""
    k: torch.Tensor
    """``[B]`` how many latents each token keeps (``keep.sum(-1)``)."""


SENTINEL = 1e8
"""The authors' ``C_h``."""


def _choose_k(sorted_scores: torch.Tensor, target: torch.Tensor, sentinel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``argmin_j |sqrt(C_j) - A| + 1`` over the given (descending) prefix (first minimum
    wins), and ``sqrt(C_j)`` of the prefix's last ``j``. With ``sentinel`` the prefix is
    all ``h`` scores and ``C_h`` is set to ``1e8`` first (the authors' code)."""
    cumulative = sorted_scores.cumsum(-1)
    if sentinel:
        cumulative[..., -1] = SENTINEL
    root = cumulative.sqrt()
    return (root - target.unsqueeze(-1)).abs().argmin(-1) + 1, root[:, -1]


def _keep_mask(indices: torch.Tensor, k: torch.Tensor, h: int) -> torch.Tensor:
    rank = torch.arange(indices.shape[-1], device=indices.device)
    chosen = rank.unsqueeze(0) < k.unsqueeze(-1)
    return torch.zeros((indices.shape[0], h), dtype=torch.bool, device=indices.device).scatter_(-1, indices, chosen)


def select_sorted(scores: torch.Tensor, target: torch.Tensor, sentinel: bool = False) -> Selection:
    """The reference rule with a full (stable) sort of all ``h`` scores per token.

    Args:
        scores: ``[B, h]`` non-negative scores ``(a_i ||W_dec,i||)^2``.
        target: ``[B]`` the norms ``A = ||x - b_dec||``.
        sentinel: exclude ``k = h`` as the authors' code does (``C_h = 1e8``).
    """
    values, indices = scores.sort(dim=-1, descending=True, stable=True)
    k, _ = _choose_k(values, target, sentinel)
    return Selection(_keep_mask(indices, k, scores.shape[-1]), k)


def select(scores: torch.Tensor, target: torch.Tensor, candidates: int = 64, sentinel: bool = False) -> Selection:
    """The same selection as :func:`select_sorted`, from ``topk`` over a bounded candidate set.

    ``candidates`` is the first candidate-set size; rows the set cannot settle are
    retried with four times as many, up to ``h`` (the full sort). The result does not
    depend on ``candidates``; only the speed does.
    """
    n, h = scores.shape
    m = max(1, min(int(candidates), h))
    k = torch.empty(n, dtype=torch.long, device=scores.device)
    keep = torch.zeros((n, h), dtype=torch.bool, device=scores.device)
    rows = None  # None: every row
    while True:
        part = scores if rows is None else scores[rows]
        goal = target if rows is None else target[rows]
        if 4 * m >= h:  # topk over a quarter or more of the latents is no faster than a sort
            m = h
            values, indices = part.sort(dim=-1, descending=True, stable=True)
        else:
            values, indices = part.topk(m, dim=-1, sorted=True)
        chosen, reach = _choose_k(values, goal, sentinel and m == h)
        # sqrt(C_m) >= A: the crossing, and with it the best j, lies within the first m.
        settled = torch.ones_like(reach, dtype=torch.bool) if m == h else reach >= goal
        mask = _keep_mask(indices, chosen, h)
        if rows is None:
            if bool(settled.all()):
                return Selection(mask, chosen)
            k.copy_(chosen)
            keep.copy_(mask)
            rows = (~settled).nonzero(as_tuple=True)[0]
        else:
            k[rows] = chosen
            keep[rows] = mask
            rows = rows[~settled]
            if rows.numel() == 0:
                return Selection(keep, k)
        m = min(h, m * 4)


def encode(pre: torch.Tensor, decoder_norms: torch.Tensor, target: torch.Tensor, candidates: int = 64,
           sentinel: bool = False, entries: bool = False):
    """The sparse code ``f = ReLU(pre) * keep`` of :func:`select`'s rule, without building
    the ``[B, h]`` scores or mask: candidates come from ``topk`` of ``pre * ||W_dec,i||``
    (whose order is the scores' order wherever a score is positive; the rest score 0 and
    add nothing), and ``f`` is scattered from the chosen entries of ``pre``, so gradients
    reach ``pre`` at the kept latents only. Returns ``(f, k)``, and with ``entries`` also
    the kept entries ``(rows, cols, values)`` (``values`` carry the gradient) for a sparse
    decode. ``f`` equals ``ReLU(pre) * select_sorted(scores, target).keep`` (up to ties
    between equal scores).

    Args:
        pre: ``[B, h]`` encoder pre-activations (may require grad).
        decoder_norms: ``[h]`` decoder row norms (positive).
        target: ``[B]`` the norms ``A`` the selection targets.
    """
    n, h = pre.shape
    with torch.no_grad():
        keys = pre.detach() * decoder_norms
    m = max(1, min(int(candidates), h))
    f = None
    k = torch.empty(n, dtype=torch.long, device=pre.device)
    found: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    rows = torch.arange(n, device=pre.device)
    first = True
    while True:
        part = keys if first else keys[rows]
        goal = target if first else target[rows]
        if 4 * m >= h:
            m = h
            values, indices = part.sort(dim=-1, descending=True, stable=True)
        else:
            values, indices = part.topk(m, dim=-1, sorted=True)
        with torch.no_grad():
            chosen, reach = _choose_k(torch.relu(values).square(), goal, sentinel and m == h)
            settled = torch.ones_like(reach, dtype=torch.bool) if m == h else reach >= goal
            kept = torch.arange(m, device=pre.device).unsqueeze(0) < chosen.unsqueeze(-1)
        source = pre if first else pre[rows]
        picked = torch.relu(source.gather(-1, indices)) * kept
        code = torch.zeros_like(source).scatter(-1, indices, picked)
        if entries:
            # the settled rows' kept entries; unsettled rows are redone with more candidates
            mask = kept & settled.unsqueeze(-1)
            local = mask.nonzero(as_tuple=True)
            found.append((rows[local[0]], indices[local], picked[local]))
        if first:
            f, k = code, chosen
            first = False
        else:
            f = f.index_put((rows,), code)
            k[rows] = chosen
        rows = rows[~settled]
        if rows.numel() == 0:
            break
        m = min(h, m * 4)
    if not entries:
        return f, k
    return f, k, tuple(torch.cat(parts) for parts in zip(*found))


class Entries(NamedTuple):
    """The kept latents of every row, row-major (:func:`entries`)."""

    k: torch.Tensor
    """``[B]`` long: how many latents each row keeps."""
    cols: torch.Tensor
    """``[nnz]`` long: the kept latents, row 0's first, each row's in descending score order."""
    offsets: torch.Tensor
    """``[B]`` long: where each row's entries start in :attr:`cols` (``cumsum(k) - k``)."""


MARGIN = {torch.float32: 2.0 ** -7, torch.float64: 2.0 ** -7}
"""How far past ``A^2`` (relative) the threshold search aims, so that the candidate set's
own cumulative sum, rounded in the scores' dtype, surely reaches ``A`` (half dtypes: 2^-4)."""


def _settle(values: torch.Tensor, target: torch.Tensor, h: int, sentinel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` from the ``m`` largest keys (descending) and whether that prefix settles the row:
    its crossing ``sqrt(C_m) >= A`` lies within it, it holds every positive score (the rest
    add nothing), or it is the whole row. With ``sentinel`` and ``m < h`` a row whose
    ``|sqrt(1e8) - A|`` beats the prefix's best is not settled (its ``k`` is ``h``)."""
    m = values.shape[-1]
    scores = torch.relu(values).square()
    cumulative = scores.cumsum(-1)
    if sentinel and m == h:
        cumulative[..., -1] = SENTINEL
    gaps = (cumulative.sqrt() - target.unsqueeze(-1)).abs()
    best, chosen = gaps.min(-1)  # first minimum
    settled = (cumulative[:, -1].sqrt() >= target) | (scores[:, -1] == 0) | (m == h)
    if sentinel and m < h:
        far = (torch.full((1,), SENTINEL, dtype=scores.dtype, device=scores.device).sqrt() - target).abs()
        settled &= ~(far < best)
    return chosen + 1, settled


def _threshold_counts(keys: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per row, how many of the largest scores a bisection on the scores' float bits says
    reach ``A^2 (1 + margin)``: the largest threshold ``t`` with ``sum(s >= t) >= goal``
    (31 halvings of the int32 bit range), or every positive score when even their sum
    falls short. No sort; ``O(31 h)`` per row."""
    s = torch.relu(keys).square().float()
    bits = s.view(torch.int32)
    goal = target.float().square() * (1 + MARGIN.get(keys.dtype, 2.0 ** -4))
    lo = torch.zeros(s.shape[0], dtype=torch.int32, device=s.device)
    hi = bits.amax(-1)
    for _ in range(31):
        mid = lo + (hi - lo + 1) // 2
        ok = torch.where(bits >= mid.unsqueeze(-1), s, 0.0).sum(-1) >= goal
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid - 1)
    t = torch.where(s.sum(-1) >= goal, lo, 1).clamp_min(1)
    return (bits >= t.unsqueeze(-1)).sum(-1)


def _stage(keys: torch.Tensor, target: torch.Tensor, m: int, sentinel: bool):
    """The ``m`` largest keys per row, sorted (a full stable sort when ``m`` is ``h``),
    with :func:`_settle`'s ``k`` and verdict."""
    h = keys.shape[-1]
    if m >= h:
        values, indices = keys.sort(dim=-1, descending=True, stable=True)
    else:
        values, indices = keys.topk(m, dim=-1, sorted=True)
    k, settled = _settle(values, target, h, sentinel)
    return indices, k, settled


def entries_torch(keys: torch.Tensor, target: torch.Tensor, candidates: int = 64, sentinel: bool = False) -> Entries:
    """:func:`entries` in plain torch (the CPU path, and the CUDA path without Triton).

    The rows the first ``topk(candidates)`` cannot settle get one threshold search
    (:func:`_threshold_counts`) and one ``topk`` of the largest count it gives; rows that
    still are not settled (the sentinel's ``k = h``, or rounding beyond the margin) get the
    full sort. Host syncs: one for ``nnz``, and on CPU-cheap checks for unsettled rows.
    """
    n, h = keys.shape
    m = max(1, min(int(candidates), h))
    indices, k, settled = _stage(keys, target, m, sentinel)
    if bool(settled.all()):
        kept = torch.arange(m, device=keys.device) < k.unsqueeze(-1)
        return Entries(k, indices[kept], k.cumsum(0) - k)
    k = k.clone()
    done = [(None, indices, settled)]
    rows = (~settled).nonzero(as_tuple=True)[0]
    for full in (False, True):
        part, goal = keys[rows], target[rows]
        size = h if full else int(_threshold_counts(part, goal).max())
        got, k_rows, ok = _stage(part, goal, max(size, 1), sentinel)
        k[rows] = k_rows
        done.append((rows, got, ok))
        rows = rows[~ok]
        if rows.numel() == 0:
            break
    offsets = k.cumsum(0) - k
    cols = torch.empty(int(k.sum()), dtype=torch.long, device=keys.device)
    for rows, got, ok in done:
        kk = k if rows is None else k[rows]
        start = offsets if rows is None else offsets[rows]
        rank = torch.arange(got.shape[-1], device=keys.device)
        kept = (rank < kk.unsqueeze(-1)) & ok.unsqueeze(-1)
        cols[(start.unsqueeze(-1) + rank)[kept]] = got[kept]
    return Entries(k, cols, offsets)


def entries(keys: torch.Tensor, target: torch.Tensor, candidates: int = 64, sentinel: bool = False) -> Entries:
    """The latents :func:`select_sorted` keeps, per row, as row-major entries, without a
    ``[B, h]`` mask.

    ``keys = pre.detach() * ||W_dec,i||`` (any float dtype); the scores are
    ``relu(keys)^2``, so the kept set equals
    ``select_sorted(relu(keys) ** 2, target, sentinel).keep`` (exact up to ties between
    equal scores, whose choice is immaterial to the code). On CUDA tensors with Triton
    importable this runs the fused per-row kernel (:mod:`interlayer.saes.topafa_triton`),
    whose one host sync is reading ``nnz`` to size ``cols``; otherwise
    :func:`entries_torch`.

    Args:
        keys: ``[B, h]`` ``pre * decoder_norms``; negative keys score 0.
        target: ``[B]`` the norms ``A``.
        candidates: the first candidate-set size (speed only, never the result).
        sentinel: the authors' ``C_h = 1e8`` (``k = h`` excluded).

    Returns:
        :class:`Entries` ``(k, cols, offsets)``; row ``b``'s kept latents are
        ``cols[offsets[b] : offsets[b] + k[b]]``.
    """
    if keys.is_cuda:
        from . import topafa_triton

        if topafa_triton.available():
            return Entries(*topafa_triton.entries(keys, target, candidates, sentinel))
    return entries_torch(keys, target, candidates, sentinel)
