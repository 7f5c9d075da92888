"""Capture: one forward pass per batch, writes (interventions) applied at their sites,
the selected rows of every read site (and their logits) copied into preallocated
device buffers as they are produced: one strided copy where the selection is the same
contiguous tokens of every row, else one ``index_select`` into the buffer rows (no
temporary). Rows bound for the host are copied on from each hook by a
:class:`~interlayer.store.host.HostStage` (asynchronously on CUDA).

This is the only code that runs the model for the activation store; every method,
with or without interventions, reads through it (:mod:`interlayer.store.collect`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..model.adapter import ModelAdapter, SiteFn
from ..errors import InterlayerError, choices
from .host import HostRows, HostStage
from .inputs import Batch
from .selection import POOLED, Selector
from .write_gates import EditGates
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

    ``source``: another site, earlier in the pass; ``fn`` then receives *that* site's
    activation from the same pass (the same rows, after any edit there) and its result
    replaces this site's (a transcoder splice: ``Edit(tc.reconstruct, rows="tokens",
    source="mlp_in.3")`` at ``mlp_out.3``).
    """

    fn: Callable[[torch.Tensor], torch.Tensor]
    rows: str = "all"
    source: str | None = None

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
    """Hooks writing each site's selected rows into preallocated device buffers.

    With a ``stage`` the buffers stay and each write is copied on to the host (see
    :mod:`interlayer.store.host`); without one, :meth:`take` hands the buffers over and the
    next chunk gets fresh ones (``output_device="model"``, or a CPU model).

    With ``check_edits`` each edit runs behind a write gate (:mod:`interlayer.store.write_gates`):
    ``gates`` checks its output and measures its change."""

    def __init__(self, model: ModelAdapter, sites: list[Site], dtype: torch.dtype, capacity: int, logits: bool,
                 edits: Mapping[str, Edit] | None = None, stage: HostStage | None = None,
                 check_edits: bool = True, shared: frozenset[str] = frozenset()) -> None:
        self.model = model
        self.stage = stage
        self.sites = sites
        self.dtype = dtype
        self.capacity = capacity
        self.logits = logits
        self.edits = dict(edits or {})
        self.shared = shared  # sites whose edits every capture of the run has (see run_shared)
        self.gates = EditGates(lambda name: model.site(name).order) if self.edits and check_edits else None
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

    def _allocate(self, rows: int | None = None) -> None:
        """Buffers of ``capacity`` rows (or of ``rows``, for a chunk of one batch larger than that)."""
        device, model, rows = self.model.device, self.model, max(self.capacity, rows or 0)
        self.buffers = {s.name: torch.empty((rows, model.d_model), dtype=self.dtype, device=device)
                        for s in self.sites}
        if self.logits:
            self.buffers[LOGITS] = torch.empty((rows, model.vocab_size), dtype=torch.float32, device=device)

    def _buffer_rows(self) -> int:
        return int(next(iter(self.buffers.values())).shape[0])

    @property
    def resume_layer(self) -> int | None:
        """The deepest block this capture's pass can skip by replaying a clean pass over
        the same batch (see :meth:`ModelAdapter.resume_after`): the block before its first
        read or edit, or that read's or edit's own block for ``resid_post``; ``None`` if
        it must run from the start. Edits every capture shares (:attr:`shared`) do not
        count: the prefix it resumes from was computed with them."""
        own = {name: e for name, e in self.edits.items() if name not in self.shared}
        edited = [*own, *(e.source for e in own.values() if e.source is not None)]
        first = min([_start(s) for s in self.sites] + [_start(self.model.site(n)) for n in edited]
                    + [self.model.n_layers])
        return first - 1 if first >= 1 else None

    def run(self, batch: Batch, selector: Selector, *, record: Sequence[int] = (),
            resume: tuple[int, Any] | None = None) -> dict[int, Any]:
        """Run one batch, appending its selected rows. ``record``: blocks whose outputs to
        keep and return (for other passes to resume from); ``resume``: skip blocks up to
        one recorded earlier on the same batch (see :attr:`resume_layer`)."""
        n = selector.n_rows
        if self.fill and self.fill + n > self.capacity:
            raise InterlayerError(f"one batch selects {n} rows but the buffer holds {self.capacity - self.fill} more; "
                                  "take the filled rows first")
        start, stop = self.fill, self.fill + n
        if not self.buffers or n > self._buffer_rows():  # handed over with the last chunk, or too small
            self._allocate(n)  # a chunk holds at least one batch, however large
        if start == 0 and self.stage is not None:
            self.stage.open(self.buffers)
        hooks = self._edit_hooks(batch)

        write = row_writer(selector, batch)
        for site in self.sites:  # after the edits: a read at an edited site sees the edit
            hooks.setdefault(site.name, []).append(self._writer(site.name, start, stop, write))
        if self.logits:
            def unembed(normed: torch.Tensor, out: torch.Tensor) -> None:
                out.copy_(self.model.head(selector(normed)))

            hooks.setdefault("ln_final", []).append(self._writer(LOGITS, start, stop, unembed))
        with self.model.record_outputs(record) as recorded:
            self.model.forward(batch.input_ids, batch.attention_mask, hooks=hooks,
                               stop_after_layer=max([self.stop_layer, *record]), resume=resume)
        if self.gates is not None:
            self.gates.end_batch()  # raises on NaN/inf before the rows count
        self.meta.append(selector.meta)
        self.fill = stop
        self.sequences += int(batch.input_ids.shape[0])
        return recorded

    def _edit_hooks(self, batch: Batch, only: frozenset[str] | None = None) -> dict[str, list[SiteFn]]:
        """The edits' hooks (of the sites in ``only``, ungated, when given: a shared
        prefix's); a source site gets a hook keeping its activation (after any edit
        there) for the edit that reads it."""
        hooks: dict[str, list[SiteFn]] = {}
        token_rows = None
        kept: dict[str, torch.Tensor] = {}
        edits = self.edits if only is None else {k: v for k, v in self.edits.items() if k in only}
        for name, edit in edits.items():
            if edit.rows == "tokens" and token_rows is None:
                token_rows = (batch.attention_mask.bool() & ~batch.bos).to(self.model.device)
            hook = _apply_edit(edit, token_rows, kept)
            if self.gates is not None and only is None:
                measured = token_rows if edit.rows == "tokens" else batch.attention_mask.bool().to(self.model.device)
                hook = self.gates.wrap(name, hook, measured, copies_input=edit.rows == "tokens" or edit.source is not None)
            hooks.setdefault(name, []).append(hook)
        for edit in edits.values():
            if edit.source is not None:
                hooks.setdefault(edit.source, []).append(lambda x, src=edit.source: kept.__setitem__(src, x))
        return hooks

    def _writer(self, name: str, start: int, stop: int, write: Callable[[torch.Tensor, torch.Tensor], None]) -> SiteFn:
        """The hook that writes a site's rows into ``buffers[name][start:stop]`` (and
        copies them on to the host when there is a stage)."""
        stage = self.stage

        def fn(x: torch.Tensor) -> None:
            if stage is not None:
                stage.before_write()
            write(x, self.buffers[name][start:stop])
            if stage is not None:
                stage.copy(name, start, stop)

        return fn

    def take(self, rows: int | None = None) -> tuple[HostRows, dict[str, torch.Tensor], int]:
        """The filled rows (optionally only the first ``rows``), their metadata and the
        number of sequences they came from, and reset. With a stage, the rows are its host
        copies (ready once :meth:`HostRows.wait` returns); without one they are handed over
        where they are, uncopied, and the capture allocates fresh buffers when it next runs
        (on a CPU model, a chunk that fills less than half its buffer is copied out instead,
        so a kept chunk never pins a mostly empty buffer)."""
        rows = self.fill if rows is None else min(rows, self.fill)
        if self.stage is not None:
            host = self.stage.close(rows)
        else:
            small = self.model.device.type == "cpu" and 2 * rows < self._buffer_rows()
            host = HostRows({k: v[:rows].clone() if small else v[:rows] for k, v in self.buffers.items()})
            self.buffers = {}
        meta = {k: torch.cat([m[k] for m in self.meta])[:rows] for k in self.meta[0]} if self.meta else {}
        sequences = self.sequences
        self.meta, self.fill, self.sequences = [], 0, 0
        return host, meta, sequences


def token_span(select: str, batch: Batch) -> tuple[int, int] | None:
    """``(first, width)`` when a selection keeps columns ``first .. first + width - 1`` of
    every row of ``batch`` and nothing else (``"tokens"`` of an unpadded or equal-length
    batch, ``"last"`` where every row ends in the same column), so the rows are one strided
    copy of ``x[:, first:first + width]``; ``None`` otherwise. Read from the host copy of the
    batch (a few ``[batch, seq]`` operations; ``None`` if the batch is not on the host)."""
    mask = batch.attention_mask
    if mask.device.type != "cpu" or select not in ("tokens", "last"):
        return None
    keep = mask.bool()
    if select == "tokens":
        keep = keep & ~batch.bos
    else:
        last = torch.where(keep, torch.arange(keep.shape[1]), -1).max(-1).values
        return (int(last[0]), 1) if int(last[0]) >= 0 and bool((last == last[0]).all()) else None
    widths = keep.sum(-1)
    width = int(widths[0])
    if width == 0 or not bool((widths == width).all()):
        return None
    first = keep.byte().argmax(-1)
    start = int(first[0])
    if not bool((first == start).all()) or not bool(keep[:, start:start + width].all()):
        return None
    return start, width


def row_writer(selector: Selector, batch: Batch) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """``write(x, out)``: the selected rows of a site's ``[batch, seq, d]`` activation ``x``
    written into ``out`` (``[n_rows, d]`` buffer rows, cast to their dtype) without a
    temporary: a strided copy for a :func:`token_span`, else one ``index_select`` into
    ``out`` (a gather, then one cast copy, when the dtypes differ); pooled selections copy
    their ``[batch, d]`` means. The values equal ``selector(x).to(out.dtype)`` exactly."""
    if selector.select in POOLED:
        return lambda x, out: out.copy_(selector(x))
    if getattr(selector, "contiguous_tokens", False):  # the selector's own flag: x[:, 1:], no host check
        span: tuple[int, int] | None = (1, int(batch.input_ids.shape[1]) - 1)
    else:
        span = token_span(selector.select, batch)
    if span is not None and span[1] * int(batch.input_ids.shape[0]) == selector.n_rows:
        first, width = span
        return lambda x, out: out.view(x.shape[0], width, x.shape[-1]).copy_(x[:, first:first + width])
    flat = selector.rows * int(batch.input_ids.shape[1]) + selector.cols  # once per batch, on the device

    def gather(x: torch.Tensor, out: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1])
        if rows.dtype == out.dtype:
            torch.index_select(rows, 0, flat, out=out)
        else:
            out.copy_(rows.index_select(0, flat))

    return gather


def _start(site: Site) -> int:
    """The first block a read or write at ``site`` needs to run (``n_layers`` for ln_final)."""
    return site.layer + 1 if site.kind == "resid_post" else site.layer


def _apply_edit(edit: Edit, token_rows: torch.Tensor | None, kept: dict[str, torch.Tensor]) -> SiteFn:
    def source(x: torch.Tensor) -> torch.Tensor:
        if edit.source is None:
            return x
        if edit.source not in kept:
            raise InterlayerError(f"the edit reading {edit.source!r} ran before that site did in this pass")
        return kept[edit.source]

    if edit.rows == "all":
        def on_all(x: torch.Tensor) -> torch.Tensor:
            new = edit.fn(source(x))
            if edit.source is not None and (not isinstance(new, torch.Tensor) or new.shape != x.shape):
                got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
                raise InterlayerError(f"an edit with source={edit.source!r} must return {tuple(x.shape)}, got {got}")
            return new

        return on_all if edit.source is not None else edit.fn

    def on_tokens(x: torch.Tensor) -> torch.Tensor:
        new = edit.fn(source(x)[token_rows])
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
        edit = as_edit(value)
        if edit.source is not None:
            src = model.site(edit.source)
            if src.order >= site.order:
                raise InterlayerError(f"the edit at {site.name!r} reads source {src.name!r}, which the pass computes "
                                      f"{'at the same place' if src == site else 'after it'}; a source must be an "
                                      f"earlier site, e.g. one of {choices(model.sites()[:3])}")
            edit = replace(edit, source=src.name)
        out[site.name] = edit
    return out


def run_shared(model: ModelAdapter, captures: list[Capture], batch: Batch, selector: Selector) -> None:
    """Run one batch through every capture; with several, the others resume from the
    shared prefix: the pass with only the edits every capture shares (:attr:`Capture.shared`;
    none: the clean pass), recorded by the first capture that has only those, or by a
    prefix-only pass."""
    if len(captures) == 1:
        captures[0].run(batch, selector)
        return
    clean = next((c for c in captures if set(c.edits) <= c.shared), None)
    resumers = [c for c in captures if c is not clean and c.resume_layer is not None]
    needed = sorted({c.resume_layer for c in resumers})
    if clean is not None:
        recorded = clean.run(batch, selector, record=needed)
    elif needed:
        hooks = captures[0]._edit_hooks(batch, only=captures[0].shared)
        with model.record_outputs(needed) as recorded:
            model.forward(batch.input_ids, batch.attention_mask, hooks=hooks, stop_after_layer=needed[-1])
    for capture in captures:
        if capture is clean:
            continue
        layer = capture.resume_layer
        capture.run(batch, selector, resume=None if layer is None else (layer, recorded[layer]))
