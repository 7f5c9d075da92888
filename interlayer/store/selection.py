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
    """The rows one batch contributes, precomputed once and applied at every site."""

    def __init__(self, select: str, batch: Batch, device: torch.device,
                 positions: Sequence[Sequence[int]] | None = None) -> None:
        check_selection(select)
        self.select = select
        mask = batch.attention_mask.to(device).bool()
        order = (mask.long().cumsum(-1) - 1)  # position of each real token within its sequence
        b, s = mask.shape
        meta: dict[str, torch.Tensor] = {}
        if select == "tokens":
            keep = mask & ~batch.bos.to(device)
            rows, cols = keep.nonzero(as_tuple=True)
        elif select == "last":
            rows = torch.arange(b, device=device)
            cols = (torch.where(mask, torch.arange(s, device=device), -1)).max(-1).values
        elif select == "positions":
            rows, cols = self._positions(batch, mask, order, positions, device)
        if select in POOLED:
            weights = mask.float() if select == "mean" else (order + 1).float() * mask
            self.weights = (weights / weights.sum(-1, keepdim=True)).unsqueeze(1)  # [b, 1, s]
            meta["sequence"] = batch.sequence_index.clone()
            self.n_rows = b
        else:
            self.rows, self.cols = rows, cols
            meta["sequence"] = batch.sequence_index.to(device)[rows].cpu()
            meta["position"] = order[rows, cols].cpu()
            meta["token_id"] = batch.input_ids.to(device)[rows, cols].cpu()
            meta["document"] = batch.documents.to(device)[rows, cols].cpu()
            self.n_rows = int(rows.numel())
        self.meta = meta

    @staticmethod
    def _positions(batch: Batch, mask: torch.Tensor, order: torch.Tensor, positions, device):
        if positions is None:
            raise InterlayerError("select='positions' needs positions=: one list of token positions per input sequence")
        lengths = mask.sum(-1).tolist()
        starts = (mask.long().argmax(-1)).tolist()  # first real token (left padding shifts it)
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
        return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, d]`` -> ``[n_rows, d]``."""
        if self.select in POOLED:
            return torch.bmm(self.weights.to(x.device), x.float()).squeeze(1)
        return x[self.rows, self.cols]
