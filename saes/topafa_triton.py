"""The fused top-AFA selection on CUDA: one Triton program per row (:func:`entries`).

Per row, with the row's scores ``s = relu(keys)^2`` held on chip (10,240 fp32 is 40 KB):

1. **Threshold search.** A bisection on the scores' float bits (nonnegative floats order
   like their int32 bits) finds the largest ``t`` with ``sum(s >= t) >= A^2 (1 + margin)``;
   the candidates are the scores ``>= t`` (every positive score if even their sum falls
   short). The margin (2^-7, half dtypes 2^-4) makes sure the candidates' own cumulative
   sum, rounded as the reference rounds it, reaches ``A``, so the crossing, and with it
   the first minimum of ``|sqrt(C_j) - A|``, lies among them. No sort, no host sync.
2. **Sort only the winners.** The candidates (about ``k`` of them) are compacted into a
   ``CAP``-wide block, packed as ``(float bits << 32) | (h - 1 - index)`` so that a
   descending sort orders them as the reference's stable descending sort does (equal
   scores by ascending index), sorted, and ``k = argmin_j |sqrt(C_j) - A| + 1`` (first
   minimum) is read off their cumulative sum. Rows with more than ``CAP`` candidates
   (early training, ``k`` in the thousands) sort their candidates within the whole row's
   block instead; still on chip, no fallback to the host.
3. **Write.** ``offsets = cumsum(k) - k`` on the device; reading ``nnz = sum(k)`` to size
   ``cols`` is the one host sync; a second launch copies each row's ``k`` sorted winners
   into ``cols`` (rows of the wide case sort again rather than keep ``[B, h]`` scratch).

Exactness: the kept set is :func:`interlayer.saes.topafa.select_sorted`'s, up to ties
between equal scores and the order in which the cumulative sum is rounded (the
interpreter's, ``TRITON_INTERPRET=1``, is sequential like torch's CPU ``cumsum`` and the
tests compare bit for bit there; CUDA's own ``cumsum``, which the reference uses on a
GPU, rounds in a tree order of its own). Half-precision keys are rounded as torch rounds
them: squares, cumulative sums and roots in the keys' dtype, gaps in the promoted dtype.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the torch path serves
    triton = None

SENTINEL = 1e8
KINDS = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
"""The key dtypes the kernel takes (others use the torch path)."""


def available() -> bool:
    """Whether Triton imports (the kernel then serves CUDA tensors)."""
    return triton is not None


def supports(keys: torch.Tensor, target: torch.Tensor) -> bool:
    """Whether the kernel takes these dtypes (fp32, fp16, bf16 keys and targets)."""
    return available() and keys.dtype in KINDS and target.dtype in KINDS and keys.dim() == 2


if triton is not None:

    @triton.jit
    def _round(x, KIND: tl.constexpr):
        """``x`` rounded to the dtype of ``KIND`` (0 fp32: as is), back in fp32."""
        if KIND == 1:
            x = x.to(tl.float16).to(tl.float32)
        elif KIND == 2:  # round to nearest even by hand (the interpreter's cast truncates)
            bits = x.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            x = bits.to(tl.float32, bitcast=True)
        return x

    @triton.jit
    def _scores(keys_ptr, row, idx, valid, h, KIND: tl.constexpr):
        """``relu(key)^2`` at ``idx`` of the row, squared in the keys' dtype, and its bits."""
        key = tl.load(keys_ptr + row.to(tl.int64) * h + idx, mask=valid, other=0.0).to(tl.float32)
        s = _round(tl.maximum(key, 0.0) * tl.maximum(key, 0.0), KIND)
        s = tl.where(valid, s, 0.0)
        return s, s.to(tl.int32, bitcast=True)

    @triton.jit
    def _threshold(s, bits, goal):
        """The largest ``t`` (as int32 bits) with ``sum(s >= t) >= goal``; 1 (every
        positive score) when even the total falls short."""
        lo = tl.full([], 0, tl.int32)
        hi = tl.max(bits, 0)
        while lo < hi:
            mid = lo + (hi - lo + 1) // 2
            ok = tl.sum(tl.where(bits >= mid, s, 0.0), 0) >= goal
            lo = tl.where(ok, mid, lo)
            hi = tl.where(ok, hi, mid - 1)
        t = tl.where(tl.sum(s, 0) >= goal, lo, 1)
        return tl.maximum(t, 1)

    @triton.jit
    def _choose(packed, j, m, h, target, sentinel_c, SENTINEL_ON: tl.constexpr, KIND: tl.constexpr,
                GKIND: tl.constexpr):
        """From sorted packed winners (``j < m`` valid): the sorted indices, ``k`` (first
        minimum of ``|sqrt(C_j) - A|``) and that minimum."""
        valid = j < m
        s = tl.where(valid, (packed >> 32).to(tl.int32).to(tl.float32, bitcast=True), 0.0)
        cols = h - 1 - packed.to(tl.int32)
        c = _round(tl.cumsum(s, 0), KIND)
        if SENTINEL_ON:
            c = tl.where((j == h - 1) & (m == h), sentinel_c, c)
        gap = tl.abs(_round(_round(tl.sqrt(c), KIND) - target, GKIND))
        gap = tl.where(valid, gap, float("inf"))
        best = tl.min(gap, 0)
        k = tl.min(tl.where(gap == best, j, 2147483647), 0) + 1
        return cols, k, best

    @triton.jit
    def _wide(s, bits, offs, inside, t, h):
        """All of a row's candidates (``bits >= t``; ``t = 0``: every latent) sorted as packed keys."""
        packed = (bits.to(tl.int64) << 32) | (h - 1 - offs).to(tl.int64)
        packed = tl.where(inside & (bits >= t), packed, -1)
        return tl.sort(packed, 0, descending=True)

    @triton.jit
    def _select_kernel(keys_ptr, target_ptr, k_ptr, t_ptr, scratch_ptr, h, margin, root_sentinel, sentinel_c,
                       BLOCK: tl.constexpr, CAP: tl.constexpr, SENTINEL_ON: tl.constexpr,
                       KIND: tl.constexpr, GKIND: tl.constexpr):
        """Per row: ``k``, and (narrow rows) the sorted winners in ``scratch``; ``t_ptr``
        keeps the threshold, negative for rows whose winners ``_write_kernel`` re-sorts."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        inside = offs < h
        s, bits = _scores(keys_ptr, row, offs, inside, h, KIND)
        target = tl.load(target_ptr + row).to(tl.float32)
        t = _threshold(s, bits, target * target * (1.0 + margin))
        cand = inside & (bits >= t)
        m = tl.sum(cand.to(tl.int32), 0)
        cand = cand | ((m == 0) & (offs == 0))  # an all-zero row keeps latent 0 (the stable sort's first)
        m = tl.maximum(m, 1)
        wide = m > CAP
        k = tl.full([], 0, tl.int32)
        if m <= CAP:
            base = scratch_ptr + row.to(tl.int64) * CAP
            tl.store(base + tl.cumsum(cand.to(tl.int32), 0) - 1, offs, mask=cand.to(tl.int32) != 0)
            tl.debug_barrier()
            j = tl.arange(0, CAP)
            idx = tl.load(base + j, mask=j < m, other=0, cache_modifier=".cg")  # written above by other threads
            sj, bj = _scores(keys_ptr, row, idx, j < m, h, KIND)
            packed = tl.where(j < m, (bj.to(tl.int64) << 32) | (h - 1 - idx).to(tl.int64), -1)
            cols, k, best = _choose(tl.sort(packed, 0, descending=True), j, m, h, target, sentinel_c,
                                    SENTINEL_ON, KIND, GKIND)
            if SENTINEL_ON:  # |sqrt(1e8) - A| beating the prefix's best means k = h
                wide = (m < h) & (tl.abs(_round(root_sentinel - target, GKIND)) < best)
            tl.debug_barrier()
            tl.store(base + j, cols, mask=j < k)
        if wide:
            t = tl.where(m > CAP, t, 0)  # the sentinel's k = h: every latent, sorted
            m = tl.where(m > CAP, m, h)
            cols, k, best = _choose(_wide(s, bits, offs, inside, t, h), offs, m, h, target, sentinel_c,
                                    SENTINEL_ON, KIND, GKIND)
            t = -1 - t
        tl.store(k_ptr + row, k.to(tl.int64))
        tl.store(t_ptr + row, t)

    @triton.jit
    def _write_kernel(keys_ptr, k_ptr, t_ptr, offsets_ptr, scratch_ptr, cols_ptr, h,
                      BLOCK: tl.constexpr, CAP: tl.constexpr, KIND: tl.constexpr):
        """Copies each row's ``k`` sorted winners into ``cols`` at its offset."""
        row = tl.program_id(0)
        k = tl.load(k_ptr + row)
        start = tl.load(offsets_ptr + row)
        t = tl.load(t_ptr + row)
        if t >= 0:
            j = tl.arange(0, CAP)
            idx = tl.load(scratch_ptr + row.to(tl.int64) * CAP + j, mask=j < k, other=0)
            tl.store(cols_ptr + start + j, idx.to(tl.int64), mask=j < k)
        else:
            offs = tl.arange(0, BLOCK)
            inside = offs < h
            s, bits = _scores(keys_ptr, row, offs, inside, h, KIND)
            packed = _wide(s, bits, offs, inside, -1 - t, h)
            cols = h - 1 - packed.to(tl.int32)
            tl.store(cols_ptr + start + offs, cols.to(tl.int64), mask=offs < k)


def _sizes(h: int, candidates: int) -> tuple[int, int, int]:
    block = max(16, triton.next_power_of_2(h))
    cap = min(max(16, triton.next_power_of_2(max(1, int(candidates)))), block)
    warps = 4 if block <= 2048 else 8 if block <= 8192 else 16
    return block, cap, warps


def entries(keys: torch.Tensor, target: torch.Tensor, candidates: int = 64,
            sentinel: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(k, cols, offsets)`` of :func:`interlayer.saes.topafa.entries` from the kernel.

    ``candidates`` sets the narrow block ``CAP`` (the next power of two, at least 16):
    rows with more candidates take the wide path. One host sync (``nnz``).
    """
    n, h = keys.shape
    keys, target = keys.contiguous(), target.contiguous()
    block, cap, warps = _sizes(h, candidates)
    kind, gkind = KINDS[keys.dtype], KINDS[torch.promote_types(keys.dtype, target.dtype)]
    margin = 2.0 ** -7 if kind == 0 else 2.0 ** -4
    sentinel_c = torch.tensor(SENTINEL, dtype=keys.dtype)
    root_sentinel = float(sentinel_c.sqrt())
    k = torch.empty(n, dtype=torch.long, device=keys.device)
    t = torch.empty(n, dtype=torch.int32, device=keys.device)
    scratch = torch.empty((n, cap), dtype=torch.int32, device=keys.device)
    if n:
        _select_kernel[(n,)](keys, target, k, t, scratch, h, margin, root_sentinel, float(sentinel_c), BLOCK=block,
                             CAP=cap, SENTINEL_ON=bool(sentinel), KIND=kind, GKIND=gkind, num_warps=warps)
    offsets = k.cumsum(0) - k
    cols = torch.empty(int(k.sum()), dtype=torch.long, device=keys.device)  # the one host sync
    if n:
        _write_kernel[(n,)](keys, k, t, offsets, scratch, cols, h, BLOCK=block, CAP=cap, KIND=kind, num_warps=warps)
    return k, cols, offsets
