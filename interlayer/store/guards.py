"""First-batch guards of a store run: the padding oracle and the control pass of the edits.

**Padding oracle** (``check_padding=True``, the default). Batching pads rows of different
lengths into a rectangle; if the padded path is wrong for an architecture (position ids
counted over padding with absolute position embeddings, an attention mask that a kernel
drops, a sliding window counted in columns instead of tokens), the rows of padded
sequences are wrong and nothing else says so. On the first batch of a run that holds a
padded row, the row with the most padding is run again alone, unpadded, through a
capture of the same sites, selection and logits, and its rows are compared with the rows
the batched pass stored: those of the clean pass when the run has one, else those of the
sites before the first edit (edits are never run twice: an edit may keep state, as the
Jacobian lens's do, and running it on a lone row would count that row twice). A difference beyond the tolerance raises
:class:`PaddingMismatchError` naming the architecture (``model_type``), the site (the
earliest in the pass that differs) and the difference. Packed contexts and equal-length
token tensors have no padding and skip it. Its cost is one single-row pass, once per run.

The measure (:func:`row_difference`) is the relative difference of the sequence's rows
together, ``||batched - alone||_F / ||alone||_F``, which must be within the tolerance ``tol``
of :func:`padding_tolerance`, and that of each row, ``||batched_i - alone_i|| / ||alone_i||``
(the denominator floored at ``1e-3`` of the mean row norm), which must be within
``ROW_FACTOR * tol`` (one wrong row among many is caught; one noisy low-precision row does not
raise). ``tol`` is ``1e-4`` for float32 (the passes differ only in the order of float sums:
1.3e-6 at worst on SmolLM2-135M, every layer and the logits), ``2e-2`` for float16 and for
float32 under TF32 matmuls (10-bit mantissas; 7e-3 per row measured in float16), ``5e-2`` for
bfloat16 (an 8-bit mantissa: 1.4e-2 over the sequence and 9e-2 at the worst row measured, at
the logits, batch sizes 4 to 16, left and right padding); the looser of the model's dtype and
the storage dtype applies. A real padding bug moves rows by 0.1 to 1.

**Logit effect** (``logit_effects=True``, opt-in): for each edited variant, the first
batch is run clean and edited to the logits, and the effect there (:class:`~interlayer.
store.write_gates.EditEffect` over the real non-BOS tokens) is recorded under
``edit_effects["logits"]``: two extra full passes of one batch, so not on by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import InterlayerError
from ..model.adapter import ModelAdapter
from .capture import LOGITS, Capture
from .inputs import Batch, TokenSequence, make_batch
from .selection import Selector
from .write_gates import edit_effect

__all__ = ["PaddingMismatchError", "PaddingOracle", "logit_effects", "padding_tolerance"]

TOLERANCES: dict[torch.dtype, float] = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}
"""The padding oracle's relative tolerance by dtype (see the module docstring)."""
ROW_FACTOR = 5.0
"""A single row may differ by this many times the tolerance (its own relative difference)."""


class PaddingMismatchError(InterlayerError):
    """A padded row's activations differ from the same sequence run alone, unpadded."""


def padding_tolerance(model_dtype: torch.dtype, storage_dtype: torch.dtype, device: torch.device) -> float:
    """The relative tolerance of the padding oracle: the looser of the model's dtype and the
    storage dtype (:data:`TOLERANCES`); float32 on CUDA with TF32 matmuls counts as float16."""
    def of(dtype: torch.dtype) -> float:
        if dtype == torch.float32 and device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
            return TOLERANCES[torch.float16]
        return TOLERANCES.get(dtype, TOLERANCES[torch.float32])

    return max(of(model_dtype), of(storage_dtype))


def padded_row(batch: Batch) -> int | None:
    """The row of ``batch`` with the most padding (the first of those), or ``None`` when no
    row has any."""
    lengths = batch.attention_mask.sum(-1)
    if not lengths.numel() or int(lengths.min()) == int(batch.attention_mask.shape[1]):
        return None
    return int(torch.argmin(lengths))


def row_difference(batched: torch.Tensor, alone: torch.Tensor) -> tuple[float, float, float]:
    """``(relative difference of all rows, largest relative difference of one row, largest
    absolute difference)`` of two ``[rows, d]`` tensors, in float32 (the module docstring
    gives the formulas)."""
    batched, alone = batched.float(), alone.float()
    delta = batched - alone
    diff, norms = delta.norm(dim=-1), alone.norm(dim=-1)
    tiny = torch.finfo(torch.float32).tiny
    rows = diff / norms.clamp(min=max(float(norms.mean()) * 1e-3, tiny))
    return float(diff.norm() / max(float(norms.norm()), tiny)), float(rows.max()), float(delta.abs().max())


class PaddingOracle:
    """Checks the first padded batch of a run (see the module docstring)."""

    def __init__(self, model: ModelAdapter, padding_side: str, positions: Sequence[Sequence[int]] | None,
                 enabled: bool = True) -> None:
        self.model = model
        self.padding_side = padding_side
        self.positions = positions
        self.done = not enabled

    def check(self, group: list[TokenSequence], batch: Batch, captures: list[Capture], starts: list[int],
              selector: Selector) -> None:
        """Compare one padded row of ``batch`` (the sequences ``group``, just run through
        ``captures``, whose rows start at ``starts``) with the same sequence run alone; once
        per run, at the first batch with a padded row.

        Raises:
            PaddingMismatchError: a site's rows differ beyond :func:`padding_tolerance`.
        """
        row = None if self.done else padded_row(batch)
        if row is None:
            return
        self.done = True
        which = next((i for i, c in enumerate(captures) if not c.edits), None)  # the clean pass when there is one
        capture, start = captures[which or 0], starts[which or 0]
        sites, logits = sorted(capture.sites, key=lambda s: s.order), capture.logits
        if which is None:  # edited passes only: the sites the pass computes before any edit
            first = min(self.model.site(name).order for name in capture.edits)
            sites, logits = [s for s in sites if s.order < first], False
        if not sites and not logits:
            return
        alone_batch = make_batch([group[row]], self.model.pad_token_id, self.padding_side, self.model.bos_token_id)
        alone_selector = Selector(selector.select, alone_batch, self.model.device, self.positions)
        alone = Capture(self.model, sites, capture.dtype, max(1, alone_selector.n_rows), logits)
        alone.run(alone_batch, alone_selector)
        mine = torch.nonzero(selector.meta["sequence"] == int(batch.sequence_index[row])).reshape(-1) + start
        tolerance = padding_tolerance(self.model.dtype, capture.dtype, self.model.device)
        for name in [s.name for s in sites] + ([LOGITS] if logits else []):
            reference = alone.buffers[name][: alone_selector.n_rows]
            if not bool(torch.isfinite(reference).all()):
                continue  # NaN/inf without padding too: not padding's doing, and no reference to compare with
            batched = capture.buffers[name].index_select(0, mine.to(capture.buffers[name].device))
            relative, worst, absolute = row_difference(batched, reference)
            if not (relative <= tolerance and worst <= ROW_FACTOR * tolerance):
                raise PaddingMismatchError(self._message(name, batch, row, (relative, worst, absolute), tolerance))

    def _message(self, site: str, batch: Batch, row: int, differences: tuple[float, float, float],
                 tolerance: float) -> str:
        relative, worst, absolute = differences
        width = int(batch.attention_mask.shape[1])
        pads = width - int(batch.attention_mask[row].sum())
        return (f"padding changes the activations of {self.model.model_type} at {site}: sequence "
                f"{int(batch.sequence_index[row])} padded with {pads} of {width} tokens on the {self.padding_side} "
                f"differs from the same sequence run alone by up to {absolute:.3g} (relative {relative:.3g} over its "
                f"rows, {worst:.3g} at the worst row; tolerance {tolerance:g} for {self.model.dtype}, "
                f"{ROW_FACTOR * tolerance:g} per row); the padded path (attention mask or "
                "position ids) is wrong here, so batched results would be silently wrong; pass check_padding=False "
                "to skip this check")


def logit_effects(model: ModelAdapter, captures: Sequence[Capture], batch: Batch) -> None:
    """Record on each edited capture's ``gates`` the effect of its edits at the logits on
    ``batch``: one clean control pass and one edited pass per capture to the logits,
    compared over the real non-BOS tokens (:func:`~interlayer.store.write_gates.edit_effect`)."""
    edited = [c for c in captures if c.gates is not None]
    selector = Selector("tokens", batch, model.device)
    if not edited or not selector.n_rows:
        return
    clean = _logits(model, batch, selector, {})
    for capture in edited:
        capture.gates.logits = edit_effect(LOGITS, clean, _logits(model, batch, selector, capture.edits))


def _logits(model: ModelAdapter, batch: Batch, selector: Selector, edits: Any) -> torch.Tensor:
    """The selected rows' logits of one pass over ``batch`` with ``edits`` (no gates)."""
    control = Capture(model, [], torch.float32, selector.n_rows, True, edits, None, check_edits=False)
    control.run(batch, selector)
    return control.buffers[LOGITS][: selector.n_rows]
