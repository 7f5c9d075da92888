"""The activation store in memory: the one source of activations for every interlayer module.

* :func:`collect` runs inputs through the model once and returns :class:`Activations`
  for any number of hook sites, selected on the fly (see :mod:`interlayer.store.selection`),
  and optionally the logits of the selected rows.
* :func:`stream` yields the same in bounded chunks, for long runs.
* ``edits={site: fn}`` runs the same passes with interventions (steering, SAE
  splicing, ablations): every method reads clean and edited activations and logits
  through this one path.

* ``tokens=N`` runs the packed contexts that hold N tokens, counted with the store's own
  BOS rule (:func:`~interlayer.store.inputs.contexts_for_tokens`), so no caller re-derives it.

One forward pass serves every site; it stops after the deepest requested read and
unembeds nothing unless ``logits=True``. Rows are written straight into buffers
preallocated on the model's device within ``memory_mb`` (or of ``rows_per_chunk`` rows),
in the model's dtype unless ``storage_dtype`` says otherwise; from a CUDA model they reach
the host by asynchronous copies into pinned memory (:mod:`interlayer.store.host`), and
:func:`collect` writes each chunk's rows straight to their places in its result
(:mod:`interlayer.store.assemble`).
The options are :class:`~interlayer.store.options.CollectOptions`; the on-disk cache is
:mod:`interlayer.store.cache`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from ..host_memory import trim_host_memory
from ..progress import tqdm

from ..errors import InterlayerError, UnknownSiteError, choices
from .assemble import Assembly, planned_rows
from ..model.adapter import ModelAdapter
from ..model.sites import Site, parse_site
from .capture import LOGITS, Capture, Edit, check_edits, chunk_rows, run_shared
from .guards import PaddingOracle, logit_effects
from .host import HostRows, host_stage
from .batching import plan_batches as _plan
from .inputs import contexts_for_tokens, make_batch
from .options import MODEL_DTYPE, CollectOptions, check_inputs, check_sites, resolve_storage_dtype, storage_dtype_name
from .selection import POOLED, Selector
from .write_gates import EditEffect, warn_no_ops

__all__ = ["Activations", "CollectOptions", "Edit", "LOGITS", "collect", "collect_variants", "stream", "stream_variants"]


# ------------------------------------------------------------------ results
@dataclass
class Activations:
    """Activations of several sites for the same rows, with the rows' metadata.

    ``acts["resid_post.6"]`` (or ``acts["blocks.6.hook_resid_post"]``) is a
    ``[rows, d_model]`` tensor; ``acts["logits"]`` the ``[rows, vocab]`` logits when
    they were asked for. ``meta`` holds one entry per row: ``sequence`` (which
    input), and for token selections ``position`` (within the sequence, BOS = 0),
    ``token_id`` and ``document``.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, torch.Tensor]
    select: str
    model: str
    n_layers: int
    n_sequences: int = 0
    """How many input sequences (or packed contexts) these rows came from."""
    edit_effects: dict[str, EditEffect] = field(default_factory=dict)
    """Each edit's effect at its site over the run so far (and at ``"logits"`` with ``logit_effects=True``):
    :class:`~interlayer.store.write_gates.EditEffect`; empty without edits or with ``check_edits=False``."""

    def __getitem__(self, site: str) -> torch.Tensor:
        if site in self.tensors:
            return self.tensors[site]
        if site != LOGITS:
            try:
                name = parse_site(site, self.n_layers).name
            except InterlayerError:
                name = None
            if name in self.tensors:
                return self.tensors[name]
        raise UnknownSiteError(f"site {site!r} was not collected; collected: {choices(self.tensors)}")

    def __contains__(self, site: str) -> bool:
        try:
            self[site]
            return True
        except InterlayerError:
            return False

    def __len__(self) -> int:
        return int(next(iter(self.meta.values())).shape[0])

    @property
    def sites(self) -> list[str]:
        """The collected site names (the keys of ``tensors``), without ``logits``."""
        return [s for s in self.tensors if s != LOGITS]

    def to_frame(self) -> pd.DataFrame:
        """The row metadata as a DataFrame, one row per activation row."""
        return pd.DataFrame({k: v.numpy() for k, v in self.meta.items()})

    def rows(self, keep: torch.Tensor) -> "Activations":
        """The subset of rows where ``keep`` (a bool mask or an index tensor) selects."""
        return Activations({k: v[keep] for k, v in self.tensors.items()}, {k: v[keep] for k, v in self.meta.items()},
                           self.select, self.model, self.n_layers, self.n_sequences, self.edit_effects)

    def stack(self, sites: Sequence[str] | None = None) -> torch.Tensor:
        """``[len(sites), rows, d]``: several sites stacked, e.g. every layer's resid_post."""
        return torch.stack([self[s] for s in (sites or self.sites)])

    def next_tokens(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For token rows: the id of each row's next token, and a mask of the rows that
        have one (the next row is the next position of the same sequence)."""
        if "position" not in self.meta:
            raise InterlayerError(f"next tokens need token rows, not select={self.select!r}")
        seq, pos, tok = self.meta["sequence"], self.meta["position"], self.meta["token_id"]
        has_next = torch.zeros_like(seq, dtype=torch.bool)
        has_next[:-1] = (seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1] + 1)
        targets = torch.zeros_like(tok)
        targets[:-1] = tok[1:]
        return targets, has_next


# ----------------------------------------------------------------- passes
def stream(model: ModelAdapter, inputs: Any, sites: str | Sequence[str | Site],
           *, select: str = "tokens", positions: Sequence[Sequence[int]] | None = None,
           batch_size: int = 8, batch_tokens: int | None = None, context_length: int | None = None,
           padding_side: str = "right", storage_dtype: str = MODEL_DTYPE, memory_mb: float = 256.0,
           rows_per_chunk: int | None = None,
           output_device: str = "cpu", max_length: int | None = None, text_field: str = "text",
           logits: bool = False, edits: Mapping[str, Any] | None = None, progress: bool = True,
           limit: int | None = None, tokens: int | None = None, skip: int = 0,
           keep_batches: Callable[[int], bool] | None = None, options: CollectOptions | None = None,
           dtype: str | None = None, check_padding: bool = True, check_edits: bool = True,
           logit_effects: bool = False) -> Iterator[Activations]:
    """Yield :class:`Activations` chunk by chunk, each at most ``memory_mb`` of rows
    (or at most ``rows_per_chunk`` rows; and at least one batch). Chunks hold whole
    batches, so their boundaries depend only on the inputs and options.

    Rows come in batch order (sequences sorted by length); ``meta['sequence']``
    says which input each row belongs to. ``sites`` may be empty when ``logits=True``.
    The keyword arguments are those of :func:`collect`.
    """
    opts = CollectOptions.of_call(options, locals())
    _check_call(inputs, sites, opts)
    return (chunks[0] for chunks in _passes(model, inputs, sites, opts, [opts.edits]))


def _check_call(inputs: Any, sites: Any, opts: CollectOptions) -> None:
    check_inputs(inputs)
    check_sites(sites, allow_empty=opts.logits)


def stream_variants(model: ModelAdapter, inputs: Any, sites: str | Sequence[str | Site],
                    variants: Sequence[Mapping[str, Any] | None],
                    *, select: str = "tokens", positions: Sequence[Sequence[int]] | None = None,
                    batch_size: int = 8, batch_tokens: int | None = None, context_length: int | None = None,
                    padding_side: str = "right", storage_dtype: str = MODEL_DTYPE, memory_mb: float = 256.0,
                    rows_per_chunk: int | None = None,
                    output_device: str = "cpu", max_length: int | None = None, text_field: str = "text",
                    logits: bool = False, edits: Mapping[str, Any] | None = None, progress: bool = True,
                    limit: int | None = None, tokens: int | None = None, skip: int = 0,
                    keep_batches: Callable[[int], bool] | None = None, options: CollectOptions | None = None,
                    dtype: str | None = None, check_padding: bool = True, check_edits: bool = True,
                    logit_effects: bool = False) -> Iterator[list[Activations]]:
    """:func:`stream` under several interventions at once: ``variants`` is a list of
    ``edits`` mappings (``{}`` or ``None``: no edit), and each chunk is a list with one
    :class:`Activations` per variant, row for row the same inputs.

    Each batch's clean prefix is computed once: a variant resumes right before its first
    edited (or read) block from the clean pass's output there, so a sweep of
    interventions at layer ``l`` costs the blocks after ``l`` only. ``edits=`` are
    shared: every variant has them too, and the prefix the variants resume from is the
    pass with those edits alone (activation patching: a corruption in ``edits=``, one
    restoration per variant; :mod:`interlayer.store.patching`). Results equal separate
    :func:`stream` calls with each variant's edits (and the shared ones), to float
    rounding. The keyword arguments are those of :func:`collect`.
    """
    opts = CollectOptions.of_call(options, locals())
    merged, shared = _check_variants(model, inputs, sites, opts, variants)
    return _passes(model, inputs, sites, opts, merged, shared=shared)


def _check_variants(model: ModelAdapter, inputs: Any, sites: Any, opts: CollectOptions,
                    variants: Any) -> tuple[list[Mapping[str, Any]], frozenset[str]]:
    """The variants with the shared ``edits=`` added to each, and the shared sites."""
    if isinstance(variants, Mapping) or not isinstance(variants, Sequence) or not variants:
        raise InterlayerError("variants must be a non-empty list of edits mappings ({} for the clean pass)")
    _check_call(inputs, sites, opts)
    shared = check_edits(model, opts.edits)
    merged = []
    for number, variant in enumerate(variants):
        own = check_edits(model, variant)
        if clash := sorted(set(own) & set(shared)):
            raise InterlayerError(f"variant {number} edits {clash[0]!r}, which edits= edits in every variant; "
                                  "combine the two into one function")
        merged.append({**shared, **own})
    return merged, frozenset(shared)


def _passes(model: ModelAdapter, inputs: Any, sites: str | Sequence[str | Site], opts: CollectOptions,
            variants: list[Mapping[str, Any] | None], plan: tuple[Iterator[Any], int | None] | None = None,
            shared: frozenset[str] = frozenset()) -> Iterator[list[Activations]]:
    """The store's passes, one chunk (a list: one :class:`Activations` per variant) at a
    time. Where the rows reach the host asynchronously, chunk n is handed over once the
    first batch of chunk n + 1 is launched and chunk n's copies are done."""
    site_list = model.expand_sites(sites) if (sites or not opts.logits) else []
    edits = [check_edits(model, v) for v in variants]
    dtype = resolve_storage_dtype(opts.storage_dtype, model.dtype, pooled=opts.select in POOLED)
    batches, n_sequences = plan or _plan(model, inputs, opts)
    capacity = opts.rows_per_chunk or chunk_rows(model, len(site_list), opts.memory_mb, dtype, opts.logits, len(variants))
    captures: list[Capture] = []
    oracle = PaddingOracle(model, opts.padding_side, opts.positions, enabled=opts.check_padding)
    on_device = opts.output_device == "model"
    pending: Pending = []
    bar = tqdm(total=n_sequences, unit="seq", disable=not opts.progress, desc="collect")
    try:
        for group in batches:
            batch = make_batch(group, model.pad_token_id, opts.padding_side, model.bos_token_id)
            selector = Selector(opts.select, batch, model.device, opts.positions)
            if not captures:
                # Never allocate more than the whole job needs.
                rows_hint = selector.n_rows * (math.ceil(n_sequences / len(group)) if n_sequences else 1 << 30)
                size = max(1, min(capacity, rows_hint))  # a larger batch gets buffers of its own size
                captures = [Capture(model, site_list, dtype, size, opts.logits, e, host_stage(model.device, on_device),
                                    check_edits=opts.check_edits, shared=shared) for e in edits]
                if opts.logit_effects:  # the first batch, against a clean control pass
                    logit_effects(model, captures, batch)
            if captures[0].fill + selector.n_rows > captures[0].capacity and captures[0].fill:
                pending = _take(captures)
                if all(rows.ready for rows, *_ in pending):
                    yield _deliver(pending, model, opts.select)
            starts = [c.fill for c in captures]
            run_shared(model, captures, batch, selector)
            oracle.check(group, batch, captures, starts, selector)
            if pending:  # launched the next batch first: chunk n's copies overlap it
                yield _deliver(pending, model, opts.select)
            trim_host_memory(model.device)  # the batch's freed tensors back to the OS, not left to creep
            bar.update(len(group))
        if captures and captures[0].fill:
            pending = _take(captures)
            yield _deliver(pending, model, opts.select)
        warn_no_ops(c.gates for c in captures)
    finally:
        bar.close()


Pending = list[tuple[HostRows, dict[str, torch.Tensor], int, dict[str, EditEffect]]]


def _take(captures: list[Capture]) -> Pending:
    """Each capture's filled rows (:meth:`Capture.take`) with its edits' effects so far."""
    return [(*c.take(), c.gates.effects() if c.gates is not None else {}) for c in captures]


def _deliver(pending: Pending, model: ModelAdapter, select: str) -> list[Activations]:
    """The taken chunks as :class:`Activations`, once their rows are ready; ``pending`` is
    emptied, so the generator's frame keeps no reference to a chunk it has handed over."""
    out = [Activations(rows.wait(), meta, select, model.name, model.n_layers, sequences, effects)
           for rows, meta, sequences, effects in pending]
    pending.clear()
    return out


def _collect(model: ModelAdapter, inputs: Any, sites: Any, opts: CollectOptions,
             variants: list[Mapping[str, Any] | None], shared: frozenset[str] = frozenset()) -> list[Activations]:
    """:func:`collect_variants` (and :func:`collect`, one variant): the passes of a plan
    held whole, whose rows per sequence size each result up front; each chunk's rows are
    written to their final places (:class:`~interlayer.store.assemble.Assembly`) and the
    chunk dropped, so the peak is one result plus the chunks in flight."""
    batches, n_sequences = _plan(model, inputs, opts)
    groups = list(batches)
    counts = planned_rows(groups, opts.select, opts.positions, model.bos_token_id)
    if not int(counts.sum()):
        raise InterlayerError("the inputs produced no rows to collect")
    assemblies = [Assembly(counts) for _ in variants]
    effects: list[dict[str, EditEffect]] = [{} for _ in variants]  # the last chunk's: the whole run's
    for chunks in _passes(model, inputs, sites, opts, variants, plan=(_drain(groups), n_sequences), shared=shared):
        _place(assemblies, chunks)
        effects = [c.edit_effects for c in chunks]
        del chunks
    out = []
    for assembly, effect in zip(assemblies, effects):
        tensors, meta, sequences = assembly.result()
        out.append(Activations(tensors, meta, opts.select, model.name, model.n_layers, sequences, effect))
    return out


def _drain(groups: list[Any]) -> Iterator[Any]:
    """The groups in order, each released once taken."""
    groups.reverse()
    while groups:
        yield groups.pop()


def _place(assemblies: list[Assembly], chunks: list[Activations]) -> None:
    for assembly, chunk in zip(assemblies, chunks):
        assembly.add(chunk)


def collect(model: ModelAdapter, inputs: Any, sites: str | Sequence[str | Site],
            *, select: str = "tokens", positions: Sequence[Sequence[int]] | None = None,
            batch_size: int = 8, batch_tokens: int | None = None, context_length: int | None = None,
            padding_side: str = "right", storage_dtype: str = MODEL_DTYPE, memory_mb: float = 256.0,
            rows_per_chunk: int | None = None,
            output_device: str = "cpu", max_length: int | None = None, text_field: str = "text",
            logits: bool = False, edits: Mapping[str, Any] | None = None, progress: bool = True,
            limit: int | None = None, tokens: int | None = None, skip: int = 0,
            keep_batches: Callable[[int], bool] | None = None, options: CollectOptions | None = None,
            dtype: str | None = None, check_padding: bool = True, check_edits: bool = True,
            logit_effects: bool = False) -> Activations:
    """Collect activations at ``sites`` for ``inputs`` in one forward pass per batch.

    Args:
        model: a :class:`~interlayer.model.adapter.ModelAdapter` (see :func:`interlayer.load_model`).
        inputs: strings, token ids, a ``.txt``/``.jsonl``/``.parquet`` path or a ``datasets.Dataset``.
        sites: site names such as ``"resid_post.6"``, TransformerLens names, or
            wildcards such as ``"resid_post.*"``.

    Keyword arguments (the fields of :class:`CollectOptions`; or pass ``options=CollectOptions(...)``):
        select: which rows to keep: ``"tokens"``, ``"last"``, ``"positions"``, ``"mean"`` or ``"weighted_mean"``.
        positions: for ``select="positions"``, the positions to keep in each input sequence.
        batch_size: sequences per forward pass.
        batch_tokens: most padded tokens per pass (unpacked inputs; :mod:`~interlayer.store.batching`).
        context_length: pack documents into contexts of this many tokens (BOS first);
            ``None`` keeps each input as one sequence.
        padding_side: pad on the ``"left"`` or the ``"right"``; results are the same either way.
        storage_dtype: the dtype rows are stored in: ``"model"`` (the default: the model's own
            dtype; pooled means, computed in float32, stay float32), float32, bfloat16 or
            float16 (or bf16, fp16). Logits are always float32.
        memory_mb: budget for the preallocated device buffers, MiB.
        rows_per_chunk: chunks of :func:`stream` of at most this many rows (whole batches, at
            least one) instead of what ``memory_mb`` holds; exactly this many when every batch
            has the same rows, as full packed contexts do.
        output_device: ``"cpu"`` (rows copied out) or ``"model"`` (left on the model's device).
        max_length: truncate longer sequences (default: the model's context), with a warning.
        text_field: column or JSON field holding the text.
        logits: also keep the final logits of the selected rows (token selections only).
        edits: writes during the passes, ``{site: fn}`` or ``{site: Edit(fn, rows="tokens")}``.
        progress: show a progress bar.
        limit: use at most this many input sequences (or packed contexts).
        tokens: packed contexts only (instead of ``limit``): run the contexts that hold this
            many tokens, counted with the store's BOS rule (:func:`contexts_for_tokens`:
            ``ceil(tokens / (context_length - 1))`` with a BOS, ``/ context_length`` without).
            The last context is whole, so the rows may hold a few more tokens.
        skip: packed contexts only: skip this many contexts without running the model.
        keep_batches: packed contexts only: run only the batches ``j`` where this is true.
        dtype: deprecated name of ``storage_dtype`` (a DeprecationWarning; goes in the next release).
        check_padding: rerun one padded sequence of the first padded batch alone; raise if it differs (guards).
        check_edits: an edit's NaN/inf raises, a no-op edit warns, ``edit_effects`` is set (write_gates).
        logit_effects: also measure the edits' effect at the logits on the first batch (two extra passes).

    Inputs and sites of the wrong type (``None``, a dict, ``sites=3``) raise a one-line
    :class:`~interlayer.errors.InterlayerError` before any model pass.

    Returns rows in input order: by sequence, then position.
    """
    opts = CollectOptions.of_call(options, locals())
    _check_call(inputs, sites, opts)
    return _collect(model, inputs, sites, opts, [opts.edits])[0]


def collect_variants(model: ModelAdapter, inputs: Any, sites: str | Sequence[str | Site],
                     variants: Sequence[Mapping[str, Any] | None],
                     *, select: str = "tokens", positions: Sequence[Sequence[int]] | None = None,
                     batch_size: int = 8, batch_tokens: int | None = None, context_length: int | None = None,
                     padding_side: str = "right", storage_dtype: str = MODEL_DTYPE, memory_mb: float = 256.0,
                     rows_per_chunk: int | None = None,
                     output_device: str = "cpu", max_length: int | None = None, text_field: str = "text",
                     logits: bool = False, edits: Mapping[str, Any] | None = None, progress: bool = True,
                     limit: int | None = None, tokens: int | None = None, skip: int = 0,
                     keep_batches: Callable[[int], bool] | None = None, options: CollectOptions | None = None,
                     dtype: str | None = None, check_padding: bool = True, check_edits: bool = True,
                     logit_effects: bool = False) -> list[Activations]:
    """:func:`collect` under several interventions, sharing each batch's clean prefix
    (see :func:`stream_variants`): one :class:`Activations` per variant, in order.
    The keyword arguments are those of :func:`collect` (``edits``: shared by every variant)."""
    opts = CollectOptions.of_call(options, locals())
    merged, shared = _check_variants(model, inputs, sites, opts, variants)
    return _collect(model, inputs, sites, opts, merged, shared)
