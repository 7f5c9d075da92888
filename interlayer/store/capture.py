"""Capture: one forward pass per batch, writes (interventions) applied at their sites,
the selected rows of every read site (and their logits) copied into preallocated
device buffers as they are produced.

This is the only code that runs the model for the activation store; every method,
with or without interventions, reads through it (:mod:`interlayer.store.collect`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..model.adapter import ModelAdapter, SiteFn
from ..errors import InterlayerError, choices
from .inputs import Batch
from .selection import Selector
from ..model.sites import Site

LOGITS = "logits"
EDIT_ROWS: tuple[str, ...] = ("all", "tokens")


@dataclass(frozen=True)
class Edit:
    """A write at a hook site during a store pass.

    ``rows="all"``: ``fn`` receives the site's ``[batch, seq, d_model]`` activation
    (padding included) and returns its replacement, as an adapter hook does.
    ``rows="tokens"``: ``fn`` receives only the real, non-BOS token rows ``[n, d_model]``
    (the rows ``select="tokens"`` keeps) and returns ``[n, d_model]``; BOS and padding
    are left as they are. A plain function passed as an edit means ``rows="all"``.
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    rows: str = "all"

    def __post_init__(self) -> None:
        if self.rows not in EDIT_ROWS:
            raise InterlayerError(f"unknown edit rows {self.rows!r}; valid choices: {choices(EDIT_ROWS)}")


def as_edit(value: Edit | SiteFn) -> Edit:
    if isinstance(value, Edit):
        return value
    if not callable(value):
        raise InterlayerError(f"an edit must be a function or an interlayer Edit, got {type(value).__name__}")
    return Edit(value)


def row_bytes(model: ModelAdapter, n_sites: int, dtype: torch.dtype, logits: bool) -> int:
    """Device bytes one captured row costs (activations, logits, metadata)."""
    return n_sites * model.d_model * dtype.itemsize + (model.vocab_size * 4 if logits else 0) + 32


def chunk_rows(model: ModelAdapter, n_sites: int, memory_mb: float, dtype: torch.dtype = torch.float32,
               logits: bool = False, variants: int = 1) -> int:
    """Rows one chunk of :func:`~interlayer.stream` holds within ``memory_mb``:
    ``max(1, floor(memory_mb * 2**20 / (row_bytes * variants)))`` (the chunk is then cut
    at whole batches, and holds at least one)."""
    return max(1, int(memory_mb * 2**20 // (row_bytes(model, n_sites, dtype, logits) * variants)))


class Capture:
    """Hooks writing each site's selected rows into preallocated device buffers."""

    def __init__(self, model: ModelAdapter, sites: list[Site], dtype: torch.dtype, capacity: int, logits: bool,
                 edits: Mapping[str, Edit] | None = None) -> None:
        self.model = model
        self.sites = sites
        self.dtype = dtype
        self.capacity = capacity
        self.logits = logits
        self.edits = dict(edits or {})
        self.buffers: dict[str, torch.Tensor] = {}
        self._allocate()
        self.meta: list[dict[str, torch.Tensor]] = []
        self.fill = 0
        self.sequences = 0
        # The pass ends after the deepest read; logits are read at the final norm's output.
        layers = [s.layer for s in sites] + ([model.n_layers] if logits else [])
        if not layers:
            raise InterlayerError("nothing to capture: give at least one site, or logits=True")
        self.stop_layer = max(layers)

    def _allocate(self) -> None:
        device, model = self.model.device, self.model
        self.buffers = {s.name: torch.empty((self.capacity, model.d_model), dtype=self.dtype, device=device)
                        for s in self.sites}
        if self.logits:
            self.buffers[LOGITS] = torch.empty((self.capacity, model.vocab_size), dtype=torch.float32, device=device)

    @property
    def resume_layer(self) -> int | None:
        """The deepest block this capture's pass can skip by replaying a clean pass over
        the same batch (see :meth:`ModelAdapter.resume_after`): the block before its first
        read or edit, or that read's or edit's own block for ``resid_post``; ``None`` if
        it must run from the start."""
        first = min([_start(s) for s in self.sites] + [_start(self.model.site(n)) for n in self.edits]
                    + [self.model.n_layers])
        return first - 1 if first >= 1 else None

    def run(self, batch: Batch, selector: Selector, *, record: Sequence[int] = (),
            resume: tuple[int, Any] | None = None) -> dict[int, Any]:
        """Run one batch, appending its selected rows. ``record``: blocks whose outputs to
        keep and return (for other passes to resume from); ``resume``: skip blocks up to
        one recorded earlier on the same batch (see :attr:`resume_layer`)."""
        n = selector.n_rows
        if self.fill + n > self.capacity:
            raise InterlayerError(f"one batch selects {n} rows but the buffer holds {self.capacity}; "
                                  "raise memory_mb or lower batch_size")
        start, stop = self.fill, self.fill + n
        if not self.buffers:  # handed over with the last chunk (take(on_device=True))
            self._allocate()
        hooks: dict[str, list[SiteFn]] = {}
        token_rows = None
        for name, edit in self.edits.items():
            if edit.rows == "tokens" and token_rows is None:
                token_rows = (batch.attention_mask.bool() & ~batch.bos).to(self.model.device)
            hooks.setdefault(name, []).append(_apply_edit(edit, token_rows))

        def writer(name: str) -> SiteFn:
            def fn(x: torch.Tensor) -> None:
                self.buffers[name][start:stop] = selector(x).to(self.dtype)

            return fn

        for site in self.sites:  # after the edits: a read at an edited site sees the edit
            hooks.setdefault(site.name, []).append(writer(site.name))
        if self.logits:
            def unembed(normed: torch.Tensor) -> None:
                self.buffers[LOGITS][start:stop] = self.model.head(selector(normed)).float()

            hooks.setdefault("ln_final", []).append(unembed)
        with self.model.record_outputs(record) as recorded:
            self.model.forward(batch.input_ids, batch.attention_mask, hooks=hooks,
                               stop_after_layer=max([self.stop_layer, *record]), resume=resume)
        self.meta.append(selector.meta)
        self.fill = stop
        self.sequences += int(batch.input_ids.shape[0])
        return recorded

    def take(self, rows: int | None = None, on_device: bool = False) -> tuple[dict[str, torch.Tensor],
                                                                           dict[str, torch.Tensor], int]:
        """The filled rows (optionally only the first ``rows``) and the number of
        sequences they came from, and reset. The rows are copied to the CPU, or with
        ``on_device`` handed over where they are, uncopied: the capture then allocates
        fresh buffers when it next runs."""
        rows = self.fill if rows is None else min(rows, self.fill)
        if on_device:
            tensors = {k: v[:rows] for k, v in self.buffers.items()}
            self.buffers = {}
        else:
            tensors = {k: v[:rows].to("cpu", copy=True) for k, v in self.buffers.items()}
        meta = {k: torch.cat([m[k] for m in self.meta])[:rows] for k in self.meta[0]} if self.meta else {}
        sequences = self.sequences
        self.meta, self.fill, self.sequences = [], 0, 0
        return tensors, meta, sequences


def _start(site: Site) -> int:
    """The first block a read or write at ``site`` needs to run (``n_layers`` for ln_final)."""
    return site.layer + 1 if site.kind == "resid_post" else site.layer


def _apply_edit(edit: Edit, token_rows: torch.Tensor | None) -> SiteFn:
    if edit.rows == "all":
        return edit.fn

    def on_tokens(x: torch.Tensor) -> torch.Tensor:
        new = edit.fn(x[token_rows])
        if not isinstance(new, torch.Tensor) or new.shape != (int(token_rows.sum()), x.shape[-1]):
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise InterlayerError(f"an edit with rows='tokens' must return [{int(token_rows.sum())}, {x.shape[-1]}], got {got}")
        out = x.clone()
        out[token_rows] = new.to(x.dtype)
        return out

    return on_tokens


def check_edits(model: ModelAdapter, edits: Mapping[str, Any] | None) -> dict[str, Edit]:
    """Validate edit sites (no wildcards) and values; keyed by canonical site name."""
    out: dict[str, Edit] = {}
    for name, value in (edits or {}).items():
        site = model.site(name)
        if site.name in out:
            raise InterlayerError(f"two edits name the same site {site.name!r}; combine them into one function")
        out[site.name] = as_edit(value)
    return out
