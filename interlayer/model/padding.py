"""Padding a batch of token-id rows: the one place that lays rows of different lengths
into a rectangle with an attention mask. Used by :meth:`ModelAdapter.tokenize`, the
store's batches (:func:`interlayer.store.inputs.make_batch`) and generation
(:mod:`interlayer.generation`, left-padded)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import InterlayerError, choices

PaddingSide = Literal["left", "right"]
PADDING_SIDES: tuple[str, ...] = ("left", "right")


def check_padding_side(side: str) -> None:
    """Raise naming ``side`` and the valid choices unless it is ``"left"`` or ``"right"``."""
    if side not in PADDING_SIDES:
        raise InterlayerError(f"padding_side={side!r}; valid choices: {choices(PADDING_SIDES)}")


def row_span(length: int, width: int, side: PaddingSide) -> slice:
    """Where a row of ``length`` tokens sits in a padded row of ``width``: at the start
    (``"right"`` padding) or at the end (``"left"`` padding)."""
    return slice(0, length) if side == "right" else slice(width - length, width)


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: PaddingSide = "right",
             device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id rows to the longest one: ``(ids, attention_mask)``, both
    ``[len(rows), width]`` long tensors; padding holds ``pad_id`` and mask 0.

    ``side="left"`` puts the padding before each row (as generation needs: every row's
    last token at the last position), ``"right"`` after it."""
    check_padding_side(side)
    if not rows:
        raise InterlayerError("no rows to pad")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = row_span(len(row), width, side)
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


__all__ = ["PADDING_SIDES", "PaddingSide", "check_padding_side", "pad_rows", "row_span"]
