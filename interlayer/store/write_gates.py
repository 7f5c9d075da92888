"""Write gates: every edit of a store pass is checked and measured as it runs.

An edit (:class:`~interlayer.store.capture.Edit`, or a plain function in ``edits=``) is a
write at a hook site. Its gate, wrapped around the edit's hook by
:class:`~interlayer.store.capture.Capture`, measures on the device, without waiting for it:

* the values the edit made non-finite (NaN or inf where its input was finite, padding
  included: a NaN in a padded key poisons every query through ``0 * NaN``);
* the change ``delta = after - before`` of each real row (padding excluded; for
  ``Edit(rows="tokens")`` the rows it was given): the rows, ``sum ||delta_i||_2``,
  ``sum ||delta_i||^2`` and ``sum ||before_i||^2``. A function that returns ``None`` and
  changed nothing in place is a read, not a write, and is not counted.

The statistics of one batch reach the host in one copy once the pass is over
(:meth:`EditGates.end_batch`): an edit that wrote NaN or inf raises
:class:`NonFiniteEditError` naming the site, after the first batch that shows it. At the
end of a run an edit whose change was exactly zero on every row warns
(:class:`NoOpEditWarning`): a write that changed nothing (a steering vector of zeros, an
edit returning its input, an in-place edit on a copy) is almost always a mistake.

The effect sizes are on the result: ``acts.edit_effects[site]`` is an :class:`EditEffect`
(the mean row change ``mean_i ||delta_i||_2`` and the relative change
``sqrt(sum ||delta_i||^2 / sum ||before_i||^2)`` over the whole run so far). With
``logit_effects=True`` the store also runs a clean control pass and the edited pass to the
logits on the first batch and records the effect there under ``edit_effects["logits"]``
(:func:`interlayer.store.guards.logit_effects`: two extra passes of one batch, up to twice
the run's cost when that batch holds its longest sequences, so it is opt-in; the edits run
again there, so an edit that keeps state sees that batch twice).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InterlayerError

__all__ = ["EditEffect", "EditGates", "NoOpEditWarning", "NonFiniteEditError", "edit_effect"]


class NonFiniteEditError(InterlayerError):
    """An edit wrote NaN or inf into the activation where its input was finite."""


class NoOpEditWarning(UserWarning):
    """An edit changed nothing at its site over a whole run."""


@dataclass(frozen=True)
class EditEffect:
    """The effect of a run's edit at one site (or, under ``"logits"``, of all of a variant's
    edits at the logits), against the unedited activation there.

    Attributes:
        site: the edited site (``"logits"`` for the effect at the logits).
        rows: the rows measured: the real tokens the edit saw (padding excluded).
        change_norm: ``mean_i ||after_i - before_i||_2`` over those rows.
        relative_change: ``sqrt(sum_i ||after_i - before_i||^2 / sum_i ||before_i||^2)``.
    """

    site: str
    rows: int
    change_norm: float
    relative_change: float


def edit_effect(site: str, before: torch.Tensor, after: torch.Tensor) -> EditEffect:
    """The :class:`EditEffect` of ``after`` against ``before``, both ``[rows, d]`` (the
    formula the gates accumulate, for a control computed all at once)."""
    delta = (after.float() - before.float()).norm(dim=-1)
    base = before.float().norm(dim=-1)
    rows = int(delta.numel())
    return EditEffect(site, rows, float(delta.sum()) / max(rows, 1),
                      _ratio(float((delta ** 2).sum()), float((base ** 2).sum())))


def _ratio(change_sq: float, base_sq: float) -> float:
    if base_sq > 0:
        return math.sqrt(change_sq / base_sq)
    return 0.0 if change_sq == 0 else math.inf


def _batch_stats(before: torch.Tensor, after: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[6]`` float32 on the device: rows, ``sum ||delta||``, ``sum ||delta||^2``,
    ``sum ||before||^2`` over the ``rows`` mask (``[b, s]``), values the edit made non-finite,
    and non-finite values of its input. No host synchronisation."""
    weight = rows.to(before.device, torch.float32)
    finite_before = torch.isfinite(before)
    made_bad = (~torch.isfinite(after) & finite_before).sum()
    delta = torch.nan_to_num(after.float() - before.float()).norm(dim=-1)
    base = torch.nan_to_num(before.float()).norm(dim=-1) ** 2
    return torch.stack([weight.sum(), (delta * weight).sum(), (delta ** 2 * weight).sum(), (base * weight).sum(),
                        made_bad.float(), (~finite_before).sum().float()])


class EditGates:
    """The gates of one capture's edits: wraps each edit hook, accumulates its statistics
    per site over the run, raises on NaN/inf, and reports the effects."""

    def __init__(self, order: Callable[[str], int]) -> None:
        self.order = order
        self.totals: dict[str, list[float]] = {}
        self.logits: EditEffect | None = None
        self._batch: list[tuple[str, torch.Tensor, bool]] = []

    def wrap(self, site: str, hook: Callable[[torch.Tensor], Any], rows: torch.Tensor,
             copies_input: bool) -> Callable[[torch.Tensor], Any]:
        """``hook`` (an edit's site function) with its gate; ``rows`` is the ``[b, s]`` mask
        of the rows to measure. ``copies_input=False`` for a hook whose function receives
        the activation itself (``rows="all"``, no source): it may edit it in place, so the
        gate keeps a copy of it first."""
        def gated(x: torch.Tensor) -> Any:
            with torch.no_grad():  # an edit may run autograd (the Jacobian lens): the gate records nothing
                before = x if copies_input else x.detach().clone()
            new = hook(x)
            after = x if new is None else new
            if isinstance(after, torch.Tensor) and after.shape == before.shape:
                with torch.no_grad():
                    self._batch.append((site, _batch_stats(before, after.detach(), rows), new is None))
            return new

        return gated

    def end_batch(self) -> None:
        """Bring the batch's statistics to the host (one copy) and add them to the run's.

        Raises:
            NonFiniteEditError: an edit wrote NaN or inf where its input was finite (the
                earliest such site in the pass is named).
        """
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        values = torch.stack([s for _, s, _ in batch]).cpu().tolist()
        bad = sorted(((self.order(site), site, v) for (site, *_), v in zip(batch, values) if v[4] > 0),
                     key=lambda item: item[0])
        if bad:
            _, site, v = bad[0]
            raise NonFiniteEditError(f"the edit at {site!r} wrote {int(v[4])} NaN/inf value(s) into an activation "
                                     f"that was finite there; check the edit's function (its output must be finite)")
        for (site, _, returned_none), v in zip(batch, values):
            if returned_none and v[1] == 0:
                continue  # a function that returned None and changed nothing in place is a read, not a write
            total = self.totals.setdefault(site, [0.0, 0.0, 0.0, 0.0])
            for i in range(4):
                total[i] += v[i]

    def effects(self) -> dict[str, EditEffect]:
        """The effect of each edit over the run so far (and ``"logits"``, when measured)."""
        out = {site: EditEffect(site, int(rows), norm_sum / rows if rows else 0.0, _ratio(change_sq, base_sq))
               for site, (rows, norm_sum, change_sq, base_sq) in self.totals.items()}
        if self.logits is not None:
            out[self.logits.site] = self.logits
        return out

    def warn_no_ops(self) -> None:
        """Warn (:class:`NoOpEditWarning`) for each edit whose change was zero on every
        row it saw in the run."""
        for site, (rows, norm_sum, _, _) in self.totals.items():
            if rows and norm_sum == 0:
                warnings.warn(f"the edit at {site!r} changed nothing: its output equals its input on all "
                              f"{int(rows)} row(s) of the run", NoOpEditWarning, stacklevel=3)


def warn_no_ops(gates: Iterable[EditGates | None]) -> None:
    """:meth:`EditGates.warn_no_ops` for every capture that has gates."""
    for gate in gates:
        if gate is not None:
            gate.warn_no_ops()
