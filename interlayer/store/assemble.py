"""The result of :func:`~interlayer.collect`, assembled in place.

The store's batches run sequences sorted by length, and :func:`~interlayer.collect`
returns rows in input order: by sequence, then position. Instead of keeping every chunk,
concatenating them and reordering the whole (three copies of the result alive at once),
:class:`Assembly` allocates the result once, from the rows each planned sequence will
give (:func:`planned_rows`), and writes each chunk's rows straight to their final places
as the chunk arrives; the chunk is then dropped. ``collect`` peaks at one result plus the
chunks in flight.

Every sequence's rows come in one chunk (a chunk holds whole batches), so a chunk's rows
are ordered within each sequence by a sort of that chunk alone (stable, by position: as a
sort of the whole would order them), and land at the sequence's offset in the result.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..errors import InterlayerError

__all__ = ["Assembly", "planned_rows"]


def planned_rows(groups: Iterable[Sequence[Any]], select: str, positions: Sequence[Sequence[int]] | None,
                 bos_id: int | None) -> torch.Tensor:
    """Rows each sequence gives under ``select``, indexed by sequence index (0 where none
    runs): ``tokens``: its tokens less a leading BOS (as :func:`~interlayer.store.inputs.make_batch`
    marks it); ``positions``: as many as it has positions; the others: one. ``groups`` are
    the batches of :class:`~interlayer.store.inputs.TokenSequence` a pass will run.
    :meth:`Assembly.add` checks each chunk against these counts."""
    counts: dict[int, int] = {}
    for group in groups:
        for seq in group:
            if select == "tokens":
                n = len(seq.ids) - int(bos_id is not None and len(seq.ids) > 0 and int(seq.ids[0]) == bos_id)
            elif select == "positions":
                n = len(positions[seq.index]) if positions is not None and seq.index < len(positions) else 0
            else:
                n = 1
            counts[int(seq.index)] = n
    out = torch.zeros(max(counts, default=-1) + 1, dtype=torch.long)
    if counts:
        out[torch.tensor(list(counts))] = torch.tensor(list(counts.values()), dtype=torch.long)
    return out


class Assembly:
    """One preallocated :class:`~interlayer.store.collect.Activations`, filled chunk by chunk."""

    def __init__(self, counts: torch.Tensor) -> None:
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts
        self.total = int(counts.sum())
        self.placed = torch.zeros(counts.numel(), dtype=torch.bool)
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict[str, torch.Tensor] = {}
        self.n_sequences = 0

    def add(self, chunk: Any) -> None:
        """Write ``chunk``'s rows (an :class:`~interlayer.store.collect.Activations` of whole
        batches) to their final places; nothing of ``chunk`` is kept."""
        dest = self._destinations(chunk.meta)
        if not self.tensors:
            self.tensors = {k: torch.empty((self.total, *v.shape[1:]), dtype=v.dtype, device=v.device)
                            for k, v in chunk.tensors.items()}
            self.meta = {k: torch.empty((self.total, *v.shape[1:]), dtype=v.dtype) for k, v in chunk.meta.items()}
        first = int(dest[0]) if dest.numel() else 0
        contiguous = torch.equal(dest, torch.arange(first, first + dest.numel()))
        for out, part in [*zip(self.tensors.values(), chunk.tensors.values()), *zip(self.meta.values(), chunk.meta.values())]:
            if contiguous:
                out[first:first + dest.numel()].copy_(part)
            else:
                out.index_copy_(0, dest.to(out.device), part)
        self.n_sequences += chunk.n_sequences

    def _destinations(self, meta: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's index in the result: its sequence's offset plus its rank within the
        sequence, by position (stable)."""
        seq = meta["sequence"]
        if not seq.numel():
            return seq.clone()
        if "position" in meta:
            order = torch.argsort(seq * (int(meta["position"].max()) + 1) + meta["position"], stable=True)
        else:
            order = torch.argsort(seq, stable=True)
        ordered = seq[order]
        if int(ordered[-1]) >= self.counts.numel() or int(ordered[0]) < 0:
            raise InterlayerError(f"internal error: a chunk holds rows of sequence {int(ordered[-1])}, which was not planned")
        present, n_rows = torch.unique_consecutive(ordered, return_counts=True)
        if not torch.equal(n_rows, self.counts[present]) or bool(self.placed[present].any()):
            raise InterlayerError("internal error: a chunk's rows per sequence differ from the planned rows")
        self.placed[present] = True
        index = torch.arange(ordered.numel())
        group_start = torch.cummax(torch.where(_starts(ordered), index, 0), 0).values
        dest = torch.empty_like(order)
        dest[order] = self.offsets[ordered] + index - group_start
        return dest

    def result(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], int]:
        """The assembled tensors, metadata and number of sequences; every planned row must
        have been placed."""
        if not self.tensors or bool((~self.placed & (self.counts > 0)).any()):
            raise InterlayerError("internal error: the passes gave fewer rows than planned")
        return self.tensors, self.meta, self.n_sequences


def _starts(ordered: torch.Tensor) -> torch.Tensor:
    """True at the first row of each run of equal values."""
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return first
