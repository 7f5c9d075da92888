"""Selections: which rows of a ``[batch, seq, d]`` activation the store keeps.

Each is computed on the device inside the hook, as the activation is produced, so
a pooled run never holds ``[batch, seq, d]`` for more than the layer at hand.

* ``tokens``: every real token, BOS and padding excluded -> ``[n_tokens, d]``.
* ``last``: the last real token of each sequence -> ``[n_sequences, d]``.
* ``positions``: given positions of each sequence (0 = its first token, BOS included;
  negative counts from the end) -> ``[n_selected, d]``.
* ``mean``: the mean over each sequence's real tokens (BOS included).
* ``weighted_mean``: the position-weighted mean with ``w_t = t`` for t = 1..n over
  the sequence's real tokens, BOS included: MEXA's sentence embedding
  (Kargaran et al. 2024; cisnlp/Mexa ``weighted_embeddings``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import InterlayerError, choices
from .inputs import Batch

SELECTIONS: tuple[str, ...] = ("tokens", "last", "positions", "mean", "weighted_mean")
POOLED: tuple[str, ...] = ("mean", "weighted_mean")


def check_selection(select: str) -> str:
    if select not in SELECTIONS:
        raise InterlayerError(f"unknown selection {select!r}; valid choices: {choices(SELECTIONS)}")
    return select


class Selector:
    """The rows one batch contributes, precomputed once and applied at every site.

    Rows, columns and the metadata are built on the CPU from the CPU batch (all of it
    is known on the host); only the index tensors (or the pooling weights) go to the
    device, in one copy (pinned and non-blocking on CUDA), so building a selector never
    waits for the device.

    Attributes:
        rows, cols: ``[n_rows]`` long tensors on ``device`` (token selections): the
            selection is ``x[rows, cols]``, in row-major order.
        meta: per-row metadata on the CPU: ``sequence``, and for token selections
            ``position``, ``token_id`` and ``document``.
        n_rows: the rows this batch contributes.
        weights: ``[b, 1, s]`` pooling weights on ``device`` (pooled selections).
        contiguous_tokens: True when the selection is every position but the first of
            every row (``select="tokens"``, no padding, each row's BOS at position 0):
            then ``x[:, 1:].reshape(-1, d)`` equals ``x[rows, cols]``, row for row.
    """

    def __init__(self, select: str, batch: Batch, device: torch.device,
                 positions: Sequence[Sequence[int]] | None = None) -> None:
        check_selection(select)
        self.select = select
        self.contiguous_tokens = False
        mask = batch.attention_mask.cpu().bool()
        order = mask.long().cumsum(-1) - 1  # position of each real token within its sequence
        b, s = mask.shape
        if select in POOLED:
            weights = mask.float() if select == "mean" else (order + 1).float() * mask
            self.weights = _to_device((weights / weights.sum(-1, keepdim=True)).unsqueeze(1), device)  # [b, 1, s]
            self.meta = {"sequence": batch.sequence_index.clone()}
            self.n_rows = b
            return
        if select == "tokens":
            bos = batch.bos.cpu()
            keep = mask & ~bos
            rows, cols = keep.nonzero(as_tuple=True)
            self.contiguous_tokens = bool(s > 0 and mask.all() and bos[:, 0].all() and int(bos.sum()) == b)
        elif select == "last":
            rows = torch.arange(b)
            cols = torch.where(mask, torch.arange(s), -1).max(-1).values
        else:
            rows, cols = self._positions(batch, mask, positions)
        self.meta = {"sequence": batch.sequence_index.cpu()[rows], "position": order[rows, cols],
                     "token_id": batch.input_ids.cpu()[rows, cols], "document": batch.documents.cpu()[rows, cols]}
        self.n_rows = int(rows.numel())
        both = _to_device(torch.stack([rows, cols]), device)  # one copy for both index tensors
        self.rows, self.cols = both[0], both[1]

    @staticmethod
    def _positions(batch: Batch, mask: torch.Tensor, positions: Sequence[Sequence[int]] | None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if positions is None:
            raise InterlayerError("select='positions' needs positions=: one list of token positions per input sequence")
        lengths = mask.sum(-1).tolist()
        starts = mask.long().argmax(-1).tolist()  # first real token (left padding shifts it)
        rows, cols = [], []
        for row, seq in enumerate(batch.sequence_index.tolist()):
            if seq >= len(positions):
                raise InterlayerError(f"positions has {len(positions)} entries but there are more input sequences")
            for pos in positions[seq]:
                n = lengths[row]
                if not -n <= pos < n:
                    raise InterlayerError(f"position {pos} is out of range for sequence {seq} of {n} tokens; "
                                          f"valid positions are {-n}..{n - 1}")
                rows.append(row)
                cols.append(starts[row] + (pos % n))
        return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, d]`` -> ``[n_rows, d]``."""
        if self.select in POOLED:
            return torch.bmm(self.weights.to(x.device), x.float()).squeeze(1)
        return x[self.rows, self.cols]


def _to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A CPU tensor on ``device``: from pinned memory without blocking on CUDA (the copy is
    ordered on the current stream before any kernel that reads it), as is on the CPU."""
    device = torch.device(device)
    if device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)
