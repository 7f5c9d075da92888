"""The activation store: the one source of activations for every interlayer module.

* :func:`collect` runs inputs through the model once and returns :class:`Activations`
  for any number of hook sites, selected on the fly (see :mod:`interlayer.selection`).
* :func:`stream` yields the same in bounded chunks, for long runs.
* :func:`cache` writes activations to disk as checksummed shards with a manifest,
  resumably; :class:`ActivationStore` reads them back memory-mapped and serves
  seeded, shuffled training batches that mix across shards.

One forward pass serves every site; it stops after the deepest requested layer and
unembeds nothing unless logits are asked for. Rows are written straight into
buffers preallocated on the model's device within ``memory_mb``.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from .adapter import ModelAdapter
from .errors import CacheCorruptError, InterlayerError, UnknownSiteError, choices
from .inputs import Batch, Sequence_, Tokenized, batches_by_length, bos_id_of, data_fingerprint, make_batch, pad_id_of
from .selection import POOLED, Selector, check_selection
from .shards import DiskBudgetError, encode_shard, read_shard, write_atomic, write_json_atomic
from .sites import Site

log = logging.getLogger(__name__)

STORAGE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
LOGITS = "logits"
MANIFEST = "manifest.json"
STORE_FORMAT = 1


def storage_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        if name not in STORAGE_DTYPES.values():
            raise InterlayerError(f"storage dtype {name} is not supported; valid choices: 'float32', 'bfloat16', 'float16'")
        return name
    if name not in STORAGE_DTYPES:
        raise InterlayerError(f"unknown storage dtype {name!r}; valid choices: {choices(STORAGE_DTYPES)}")
    return STORAGE_DTYPES[name]


def expand_sites(model: ModelAdapter, sites: str | Sequence[str | Site]) -> list[Site]:
    """Parse site names, expanding wildcards (``resid_post.*``, ``blocks.*.hook_mlp_out``),
    dropping duplicates, in forward order. Unknown names list the valid ones."""
    if isinstance(sites, (str, Site)):
        sites = [sites]
    out: dict[str, Site] = {}
    for name in sites:
        if isinstance(name, Site):
            out[name.name] = model.site(name)
            continue
        text = name.strip()
        kind = None
        if text.endswith(".*"):
            kind = text[:-2]
        elif text.startswith("blocks.*.hook_"):
            kind = text[len("blocks.*.hook_"):]
        if kind is not None:
            if kind not in model.site_kinds():
                raise UnknownSiteError(f"unknown site kind {kind!r} in {name!r}; valid kinds: {choices(model.site_kinds())}")
            for layer in range(model.n_layers):
                out[f"{kind}.{layer}"] = Site(layer, kind)
        else:
            site = model.site(text)
            out[site.name] = site
    if not out:
        raise UnknownSiteError(f"no sites given; valid sites look like {choices(model.sites()[:5])}, ... or 'resid_post.*'")
    return sorted(out.values(), key=lambda s: s.order)


# ------------------------------------------------------------------ results
@dataclass
class Activations:
    """Activations of several sites for the same rows, with the rows' metadata.

    ``acts["resid_post.6"]`` (or ``acts["blocks.6.hook_resid_post"]``) is a
    ``[rows, d_model]`` tensor. ``meta`` holds one entry per row: ``sequence`` (which
    input), and for token selections ``position`` (within the sequence, BOS = 0),
    ``token_id`` and ``document``.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict[str, torch.Tensor]
    select: str
    model: str
    n_layers: int

    def __getitem__(self, site: str) -> torch.Tensor:
        if site in self.tensors:
            return self.tensors[site]
        if site != LOGITS:
            from .sites import parse_site

            name = parse_site(site, self.n_layers).name
            if name in self.tensors:
                return self.tensors[name]
        raise UnknownSiteError(f"site {site!r} was not collected; collected: {choices(self.tensors)}")

    def __contains__(self, site: str) -> bool:
        try:
            self[site]
            return True
        except (UnknownSiteError, InterlayerError):
            return False

    def __len__(self) -> int:
        return int(next(iter(self.meta.values())).shape[0])

    @property
    def sites(self) -> list[str]:
        return [s for s in self.tensors if s != LOGITS]

    def to_frame(self) -> pd.DataFrame:
        """The row metadata as a DataFrame, one row per activation row."""
        return pd.DataFrame({k: v.numpy() for k, v in self.meta.items()})

    def rows(self, keep: torch.Tensor) -> "Activations":
        """The subset of rows where ``keep`` (a bool mask or an index tensor) selects."""
        return Activations({k: v[keep] for k, v in self.tensors.items()}, {k: v[keep] for k, v in self.meta.items()},
                           self.select, self.model, self.n_layers)

    def stack(self, sites: Sequence[str] | None = None) -> torch.Tensor:
        """``[len(sites), rows, d]``: several sites stacked, e.g. every layer's resid_post."""
        return torch.stack([self[s] for s in (sites or self.sites)])


# ----------------------------------------------------------------- capture
class _Capture:
    """Hooks writing each site's selected rows into preallocated device buffers."""

    def __init__(self, model: ModelAdapter, sites: list[Site], dtype: torch.dtype, capacity: int, logits: bool):
        self.model = model
        self.sites = sites
        self.dtype = dtype
        self.capacity = capacity
        self.logits = logits
        device = model.device
        self.buffers = {s.name: torch.empty((capacity, model.d_model), dtype=dtype, device=device) for s in sites}
        if logits:
            self.buffers[LOGITS] = torch.empty((capacity, model.vocab_size), dtype=torch.float32, device=device)
        self.meta: list[dict[str, torch.Tensor]] = []
        self.fill = 0
        layers = [s.layer for s in sites] + ([model.n_layers - 1] if logits else [])
        self.stop_layer = max(layers)

    def run(self, batch: Batch, selector: Selector) -> int:
        n = selector.n_rows
        if self.fill + n > self.capacity:
            raise InterlayerError(f"one batch selects {n} rows but the buffer holds {self.capacity}; "
                                  "raise memory_mb or lower batch_size")
        start, stop = self.fill, self.fill + n

        def writer(name: str):
            def fn(x: torch.Tensor) -> None:
                self.buffers[name][start:stop] = selector(x).to(self.dtype)

            return fn

        hooks: dict[str, list] = {s.name: [writer(s.name)] for s in self.sites}
        if self.logits:
            last = f"resid_post.{self.model.n_layers - 1}"

            def unembed(x: torch.Tensor) -> None:
                self.buffers[LOGITS][start:stop] = self.model.unembed_resid(selector(x)).float()

            hooks.setdefault(last, []).append(unembed)
        self.model.forward(batch.input_ids, batch.attention_mask, hooks=hooks, stop_after_layer=self.stop_layer)
        self.meta.append(selector.meta)
        self.fill = stop
        return n

    def take(self, rows: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copy out the filled rows (optionally only the first ``rows``) and reset."""
        rows = self.fill if rows is None else min(rows, self.fill)
        tensors = {k: v[:rows].to("cpu", copy=True) for k, v in self.buffers.items()}
        meta = {k: torch.cat([m[k] for m in self.meta])[:rows] for k in self.meta[0]} if self.meta else {}
        self.meta, self.fill = [], 0
        return tensors, meta


def _row_bytes(model: ModelAdapter, n_sites: int, dtype: torch.dtype, logits: bool) -> int:
    return n_sites * model.d_model * dtype.itemsize + (model.vocab_size * 4 if logits else 0) + 32


# ----------------------------------------------------------------- collect
@dataclass
class CollectOptions:
    """Options of :func:`collect`, :func:`stream` and :func:`cache`."""

    select: str = "tokens"
    """Which rows to keep: tokens, last, positions, mean or weighted_mean."""
    positions: Sequence[Sequence[int]] | None = None
    """For select='positions': the positions to keep in each input sequence."""
    batch_size: int = 8
    """Sequences per forward pass."""
    context_length: int | None = None
    """Pack documents into contexts of this many tokens (BOS first); None keeps each input as one sequence."""
    padding_side: str = "right"
    """Pad on the 'left' or the 'right'; results are the same either way."""
    dtype: str = "float32"
    """Storage dtype: float32, bfloat16 or float16."""
    memory_mb: float = 256.0
    """Budget for the preallocated device buffers, MiB."""
    max_length: int | None = None
    """Truncate longer sequences (default: the model's context), with a warning."""
    text_field: str = "text"
    """Column or JSON field holding the text."""
    logits: bool = False
    """Also keep the final logits of the selected rows (not for pooled selections)."""
    progress: bool = True
    """Show a progress bar."""
    limit: int | None = None
    """Use at most this many input sequences (or packed contexts)."""
    skip: int = 0
    """Packed contexts only: skip this many contexts without running the model (to resume)."""


def _options(options: dict[str, Any]) -> CollectOptions:
    names = {f.name for f in dataclasses.fields(CollectOptions)}
    unknown = set(options) - names
    if unknown:
        raise InterlayerError(f"unknown option(s) {choices(sorted(unknown))}; valid options: {choices(sorted(names))}")
    opts = CollectOptions(**options)
    check_selection(opts.select)
    storage_dtype(opts.dtype)
    if opts.logits and opts.select in POOLED:
        raise InterlayerError(f"logits=True needs a token selection, not {opts.select!r}")
    if opts.memory_mb <= 0:
        raise InterlayerError(f"memory_mb must be positive, got {opts.memory_mb}")
    return opts


def _plan(model: ModelAdapter, inputs: Any, opts: CollectOptions) -> tuple[Iterator[list[Sequence_]], int | None]:
    """Batches of sequences, and the number of sequences when known up front."""
    tok = Tokenized(model, opts.max_length)
    if opts.limit is not None and opts.limit < 1:
        raise InterlayerError(f"limit must be at least 1, got {opts.limit}")
    if opts.skip < 0:
        raise InterlayerError(f"skip must be at least 0, got {opts.skip}")
    if opts.context_length is not None:
        contexts = tok.packed(inputs, opts.context_length, opts.text_field)
        if opts.skip or opts.limit is not None:
            contexts = itertools.islice(contexts, opts.skip, None if opts.limit is None else opts.skip + opts.limit)

        def sequential() -> Iterator[list[Sequence_]]:
            chunk: list[Sequence_] = []
            for context in contexts:
                chunk.append(context)
                if len(chunk) == opts.batch_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        return sequential(), None
    if opts.skip:
        raise InterlayerError("skip needs packed contexts (context_length); for unpacked inputs pass the remaining inputs")
    sequences = tok.sequences(inputs, opts.text_field, opts.limit)
    return iter(batches_by_length(sequences, opts.batch_size)), len(sequences)


def stream(model: ModelAdapter, inputs: Any, sites: str | Sequence[str], **options: Any) -> Iterator[Activations]:
    """Yield :class:`Activations` chunk by chunk, each at most ``memory_mb`` of rows.

    Rows come in batch order (sequences sorted by length); ``meta['sequence']``
    says which input each row belongs to. Takes the options of :class:`CollectOptions`.
    """
    opts = _options(options)
    site_list = expand_sites(model, sites)
    dtype = storage_dtype(opts.dtype)
    batches, n_sequences = _plan(model, inputs, opts)
    capacity = max(1, int(opts.memory_mb * 2**20 // _row_bytes(model, len(site_list), dtype, opts.logits)))
    pad_id, bos_id = pad_id_of(model), bos_id_of(model)
    capture = None
    bar = tqdm(total=n_sequences, unit="seq", disable=not opts.progress, desc="collect")
    try:
        for group in batches:
            batch = make_batch(group, pad_id, opts.padding_side, bos_id)
            selector = Selector(opts.select, batch, model.device, opts.positions)
            if capture is None:
                # Never allocate more than the whole job needs.
                rows_hint = selector.n_rows * (math.ceil(n_sequences / len(group)) if n_sequences else 1 << 30)
                capture = _Capture(model, site_list, dtype, max(selector.n_rows, min(capacity, rows_hint)), opts.logits)
            if capture.fill + selector.n_rows > capture.capacity and capture.fill:
                yield _chunk(capture, model, opts.select)
            capture.run(batch, selector)
            bar.update(len(group))
        if capture is not None and capture.fill:
            yield _chunk(capture, model, opts.select)
    finally:
        bar.close()


def _chunk(capture: _Capture, model: ModelAdapter, select: str) -> Activations:
    tensors, meta = capture.take()
    return Activations(tensors, meta, select, model.name, model.n_layers)


def collect(model: ModelAdapter, inputs: Any, sites: str | Sequence[str], **options: Any) -> Activations:
    """Collect activations at ``sites`` for ``inputs`` in one forward pass per batch.

    Args:
        model: a :class:`~interlayer.adapter.ModelAdapter` (see :func:`interlayer.load_model`).
        inputs: strings, token ids, a ``.txt``/``.jsonl``/``.parquet`` path or a ``datasets.Dataset``.
        sites: site names such as ``"resid_post.6"``, TransformerLens names, or
            wildcards such as ``"resid_post.*"``.
        **options: see :class:`CollectOptions` (``select``, ``batch_size``, ``dtype``, ...).

    Returns rows in input order: by sequence, then position.
    """
    chunks = list(stream(model, inputs, sites, **options))
    if not chunks:
        raise InterlayerError("the inputs produced no rows to collect")
    tensors = {k: torch.cat([c.tensors[k] for c in chunks]) for k in chunks[0].tensors}
    meta = {k: torch.cat([c.meta[k] for c in chunks]) for k in chunks[0].meta}
    if "position" in meta:
        order = torch.argsort(meta["sequence"] * (int(meta["position"].max()) + 1) + meta["position"], stable=True)
    else:
        order = torch.argsort(meta["sequence"], stable=True)
    if not torch.equal(order, torch.arange(order.numel())):
        tensors = {k: v[order] for k, v in tensors.items()}
        meta = {k: v[order] for k, v in meta.items()}
    return Activations(tensors, meta, chunks[0].select, model.name, model.n_layers)


# ------------------------------------------------------------------- cache
_IDENTITY_FIELDS = ("sites", "select", "dtype", "context_length", "batch_size", "shard_rows", "tokens_target",
                    "data_sha256", "text_field", "d_model")


def cache(model: ModelAdapter, data: Any, sites: str | Sequence[str], out: str | Path, tokens: int, *,
          context_length: int = 128, batch_size: int = 8, dtype: str = "float32", memory_mb: float = 256.0,
          disk_budget_mb: float | None = None, text_field: str = "text", progress: bool = True,
          on_shard: Any = None) -> "ActivationStore":
    """Write the activations of ``tokens`` tokens at ``sites`` to shards in ``out``.

    Documents are packed into contexts of ``context_length`` tokens (BOS, then text);
    every token but the BOS is kept. Each shard is at most ``memory_mb`` (the device
    buffer it is filled in) and holds whole batches, so shard boundaries depend only
    on the options. The manifest is rewritten atomically after every shard: a run
    that is interrupted resumes from its last whole shard when called again with the
    same options, and ends with exactly the shards an uninterrupted run writes.

    A manifest written for other weights or other options is refused; a shard
    whose checksum fails is named in the error.
    """
    if tokens < 1:
        raise InterlayerError(f"tokens must be at least 1, got {tokens}")
    out = Path(out)
    site_list = expand_sites(model, sites)
    dtype_ = storage_dtype(dtype)
    dtype_name = str(dtype_).removeprefix("torch.")
    if context_length < 2:
        raise InterlayerError(f"context_length must be at least 2, got {context_length}")
    batch_rows = batch_size * (context_length - 1)
    row_bytes = _row_bytes(model, len(site_list), dtype_, False)
    batches_per_shard = int(memory_mb * 2**20 // (row_bytes * batch_rows))
    if batches_per_shard < 1:
        raise InterlayerError(f"memory_mb={memory_mb} cannot hold one batch of {batch_rows} tokens at "
                              f"{len(site_list)} site(s) ({row_bytes * batch_rows / 2**20:.1f} MiB); raise memory_mb "
                              "or lower batch_size or context_length")
    shard_rows = min(batches_per_shard * batch_rows, math.ceil(tokens / batch_rows) * batch_rows)
    identity = {
        "model": model.name, "weights_sha256": model.weights_sha256(), "sites": [s.name for s in site_list],
        "select": "tokens", "dtype": dtype_name, "context_length": context_length, "batch_size": batch_size,
        "shard_rows": shard_rows, "tokens_target": int(tokens), "data_sha256": data_fingerprint(data),
        "data": str(data) if isinstance(data, (str, Path)) else type(data).__name__, "text_field": text_field,
        "d_model": model.d_model,
    }
    manifest = _resume_manifest(out, identity)
    if manifest.get("complete"):
        return ActivationStore(out)
    done_rows = sum(s["rows"] for s in manifest["shards"])
    done_contexts = sum(s["contexts"] for s in manifest["shards"])

    opts = _options({"select": "tokens", "batch_size": batch_size, "context_length": context_length,
                     "dtype": dtype_name, "text_field": text_field, "progress": False})
    batches, _ = _plan(model, data, opts)
    capture = _Capture(model, site_list, dtype_, shard_rows, logits=False)
    pad_id, bos_id = pad_id_of(model), bos_id_of(model)
    bar = tqdm(total=tokens, initial=done_rows, unit="tok", unit_scale=True, disable=not progress, desc="cache")
    skipped = 0
    shard_contexts = 0
    try:
        for group in batches:
            if skipped < done_contexts:  # resume: these contexts are in finished shards
                skipped += len(group)
                continue
            if done_rows >= tokens:
                break
            batch = make_batch(group, pad_id, "right", bos_id)
            selector = Selector("tokens", batch, model.device)
            if capture.fill + selector.n_rows > capture.capacity:
                done_rows += _write_shard(out, manifest, capture, shard_contexts, None, disk_budget_mb, on_shard)
                shard_contexts = 0
            capture.run(batch, selector)
            shard_contexts += len(group)
            bar.update(min(selector.n_rows, tokens - done_rows - capture.fill + selector.n_rows))
            if done_rows + capture.fill >= tokens:
                done_rows += _write_shard(out, manifest, capture, shard_contexts, tokens - done_rows, disk_budget_mb, on_shard)
                shard_contexts = 0
                break
        if capture.fill:
            done_rows += _write_shard(out, manifest, capture, shard_contexts, None, disk_budget_mb, on_shard)
    finally:
        bar.close()
    if done_rows == 0:
        raise InterlayerError("the data produced no tokens to cache")
    if done_rows < tokens:
        log.warning("the data ran out after %d of %d tokens", done_rows, tokens)
    manifest["complete"] = True
    manifest["n_rows"] = done_rows
    write_json_atomic(out / MANIFEST, manifest)
    return ActivationStore(out)


def _resume_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        manifest = {"format": STORE_FORMAT, **identity, "shards": [], "n_rows": 0, "complete": False}
        for stale in out.glob("shard_*"):
            stale.unlink()
        write_json_atomic(path, manifest)
        return manifest
    manifest = _read_manifest(out)
    if manifest.get("weights_sha256") != identity["weights_sha256"]:
        raise InterlayerError(
            f"{path} was written for model {manifest.get('model')!r} (weights sha256 "
            f"{str(manifest.get('weights_sha256'))[:12]}...), not {identity['model']!r} "
            f"({identity['weights_sha256'][:12]}...); use another --out directory")
    differing = [k for k in _IDENTITY_FIELDS if manifest.get(k) != identity[k]]
    if differing:
        detail = "; ".join(f"{k}: {manifest.get(k)!r} there, {identity[k]!r} now" for k in differing)
        raise InterlayerError(f"{path} was written with other options ({detail}); use another --out directory")
    listed = {s["file"] for s in manifest["shards"]}
    for stale in out.glob("shard_*"):
        if stale.name not in listed:  # a shard written after the last manifest update, or a .part file
            stale.unlink()
    for shard in manifest["shards"]:
        read_shard(out / shard["file"], shard["sha256"])
    if manifest["shards"]:
        log.info("resuming %s after %d shard(s)", out, len(manifest["shards"]))
    return manifest


def _write_shard(out: Path, manifest: dict[str, Any], capture: _Capture, contexts: int, rows: int | None,
                 disk_budget_mb: float | None, on_shard: Any) -> int:
    tensors, meta = capture.take(rows)
    n = next(iter(tensors.values())).shape[0]
    index = len(manifest["shards"])
    payload = encode_shard({**tensors, **{f"meta.{k}": v for k, v in meta.items()}}, {"shard": str(index)})
    used = sum(s["bytes"] for s in manifest["shards"])
    if disk_budget_mb is not None and used + len(payload) > disk_budget_mb * 2**20:
        raise DiskBudgetError(
            f"disk budget of {disk_budget_mb} MiB exhausted: {used / 2**20:.1f} MiB written in "
            f"{index} shard(s), the next needs {len(payload) / 2**20:.1f} MiB; {out} keeps the whole shards, "
            "and a run with a larger budget resumes from them")
    free = shutil.disk_usage(out).free
    if len(payload) + 2**20 > free:
        raise DiskBudgetError(f"not enough free disk for shard {index} of {out}: it needs "
                              f"{len(payload) / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free")
    name = f"shard_{index:05d}.safetensors"
    sha = write_atomic(out / name, payload)
    manifest["shards"].append({"file": name, "rows": n, "contexts": contexts, "sha256": sha, "bytes": len(payload)})
    manifest["n_rows"] = sum(s["rows"] for s in manifest["shards"])
    write_json_atomic(out / MANIFEST, manifest)
    if on_shard is not None:
        on_shard(index)
    return n


def _read_manifest(out: Path) -> dict[str, Any]:
    import json

    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{out / MANIFEST} is missing or unreadable: {err}") from err
    if manifest.get("format") != STORE_FORMAT:
        raise CacheCorruptError(f"{out / MANIFEST} has format {manifest.get('format')!r}, expected {STORE_FORMAT}")
    return manifest


# ------------------------------------------------------------------- store
class ActivationStore:
    """Activations cached on disk by :func:`cache`, memory-mapped.

    Each shard's sha256 is verified the first time this object opens it; a
    mismatch raises :class:`~interlayer.errors.CacheCorruptError` naming the shard.
    """

    def __init__(self, path: str | Path, model: ModelAdapter | None = None) -> None:
        self.path = Path(path)
        self.manifest = _read_manifest(self.path)
        if not self.manifest.get("complete"):
            raise InterlayerError(f"{self.path} is an unfinished cache ({len(self.manifest['shards'])} shard(s)); "
                                  "run the same cache command again to resume it")
        if model is not None and model.weights_sha256() != self.manifest["weights_sha256"]:
            raise InterlayerError(f"{self.path} was written for model {self.manifest['model']!r}, not {model.name!r}")
        self._shards: dict[int, dict[str, torch.Tensor]] = {}
        rows = [s["rows"] for s in self.manifest["shards"]]
        self.offsets = torch.tensor([0] + rows).cumsum(0)

    @property
    def sites(self) -> list[str]:
        return list(self.manifest["sites"])

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, model={self.manifest['model']!r}, sites={self.sites}, "
                f"rows={self.n_rows}, shards={self.n_shards}, dtype={self.manifest['dtype']})")

    def shard(self, index: int) -> dict[str, torch.Tensor]:
        """Shard ``index`` as memory-mapped tensors (site names and ``meta.*``)."""
        if not 0 <= index < self.n_shards:
            raise InterlayerError(f"shard {index} is out of range; valid shards are 0..{self.n_shards - 1}")
        if index not in self._shards:
            info = self.manifest["shards"][index]
            self._shards[index] = read_shard(self.path / info["file"], info["sha256"])
        return self._shards[index]

    def _check_site(self, site: str) -> str:
        if site in self.sites or site.startswith("meta."):
            return site
        from .sites import parse_site

        try:
            name = parse_site(site, 10**6).name
        except InterlayerError:
            name = site
        if name not in self.sites:
            raise UnknownSiteError(f"site {site!r} is not in {self.path}; cached sites: {choices(self.sites)}")
        return name

    def load(self, site: str) -> torch.Tensor:
        """All rows of one site (or ``meta.*`` column) as one tensor in memory."""
        site = self._check_site(site)
        return torch.cat([self.shard(i)[site] for i in range(self.n_shards)])

    def to_frame(self) -> pd.DataFrame:
        """Row metadata (sequence, position, token_id, document) as a DataFrame."""
        keys = [k for k in self.shard(0) if k.startswith("meta.")]
        return pd.DataFrame({k.removeprefix("meta."): self.load(k).numpy() for k in keys})

    def batches(self, site: str | Sequence[str], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                epochs: int = 1, start: int = 0, drop_last: bool = False, dtype: torch.dtype = torch.float32,
                device: str | torch.device | None = None, with_index: bool = False) -> Iterator[Any]:
        """Yield ``[batch_size, d]`` batches of one site (``[n_sites, batch_size, d]``
        for a list of sites, the same rows at each).

        With ``shuffle`` every epoch is a seeded permutation of all rows, so a batch
        mixes rows from across the shards; the same seed gives the same batches.
        ``start`` skips that many batches, to resume a training run exactly.
        With ``with_index`` each item is ``(batch, row_index)``; see :meth:`shard_files`.
        """
        many = not isinstance(site, str)
        names = [self._check_site(s) for s in (site if many else [site])]
        if batch_size < 1:
            raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
        n = self.n_rows
        per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        number = 0
        for epoch in range(epochs):
            if shuffle:
                order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            else:
                order = torch.arange(n)
            for b in range(per_epoch):
                number += 1
                if number <= start:
                    continue
                index = order[b * batch_size : (b + 1) * batch_size]
                rows = [self._gather(name, index).to(device=device, dtype=dtype) for name in names]
                batch = torch.stack(rows) if many else rows[0]
                yield (batch, index) if with_index else batch

    def shard_files(self, rows: torch.Tensor) -> list[str]:
        """The shard files holding the given global row indices."""
        shard_of = torch.searchsorted(self.offsets, rows.reshape(-1), right=True) - 1
        return [self.manifest["shards"][int(i)]["file"] for i in shard_of.unique().tolist()]

    def _gather(self, site: str, index: torch.Tensor) -> torch.Tensor:
        shard_of = torch.searchsorted(self.offsets, index, right=True) - 1
        out = torch.empty((index.numel(), self.manifest["d_model"]), dtype=storage_dtype(self.manifest["dtype"]))
        for shard in shard_of.unique().tolist():
            where = (shard_of == shard).nonzero(as_tuple=True)[0]
            local = index[where] - self.offsets[shard]
            out[where] = self.shard(shard)[site][local]
        return out
