"""The activation store on disk: :func:`cache` writes activations as checksummed shards
with a manifest, resumably; :class:`ActivationStore` reads them back memory-mapped and
serves seeded, shuffled training batches that mix across shards.

Shards are the chunks of :func:`interlayer.store.collect.stream` (whole batches, at most
``memory_mb`` each), so their boundaries depend only on the options, and a resumed run
continues the same stream with ``skip=``.

Ownership: a cache directory is the toolkit's once ``manifest.json`` is in it. The
manifest is written before the first shard; while it lists no shard, a run with other
options may replace it (a failed first run never blocks the corrected one). Only files
named like shards (``shard_00000.safetensors`` and their ``.part``) and not listed in the
manifest are ever deleted; a non-empty directory without a manifest is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from ..progress import tqdm

from ..distributed import World, current
from ..errors import InterlayerError, UnknownSiteError, choices
from ..io.dtypes import dtype_name, parse_dtype
from ..io.files import check_writable, write_json_atomic
from ..io.seeding import SCHEMES, epoch_order
from ..model.adapter import ModelAdapter
from ..model.sites import Site, parse_site
from ..options import CONTEXT_LENGTH, Options, option
from .cache_files import (IDENTITY_FIELDS, MANIFEST, cache_chunks, open_manifest, read_cache_manifest,
                          remove_stale_shards, write_shard)
from .cache_ranks import cache_on_ranks
from .capture import row_bytes
from .collect import Activations
from .inputs import contexts_for_tokens, data_fingerprint
from .options import MODEL_DTYPE, KeywordOptions, check_inputs, check_sites, check_storage_dtype, resolve_storage_dtype
from .shards import read_shard
from .writer import ShardWriter

log = logging.getLogger(__name__)



@dataclass
class CacheOptions(KeywordOptions, Options):
    """Options of :func:`cache` (the ``interlayer cache`` command adds the model, data, sites
    and output; its config declares these fields once, as ``CacheOptions.variant(name)``).

    Memory: a chunk (one shard) holds at most ``memory_mb`` of rows. The model fills one
    chunk while the writer thread (:mod:`interlayer.store.writer`) serialises, checksums and
    writes up to ``write_queue`` earlier ones, so the host holds at most ``write_queue + 1``
    chunks of rows, plus the serialised bytes of the shard being written: about
    ``(write_queue + 2) * memory_mb`` (``2 * memory_mb`` with ``write_queue=0``)."""

    tokens: int = option(100_000, "how many tokens to cache (BOS excluded)", min=1)
    context_length: int = option(CONTEXT_LENGTH, "tokens per packed context, BOS included", min=2)
    batch_size: int = option(8, "sequences (packed contexts) per forward pass", min=1)
    storage_dtype: str = option(MODEL_DTYPE, "dtype of the stored activations: 'model' (the model's own dtype), float32, "
                                             "bfloat16 or float16 (or bf16, fp16); the manifest records the dtype itself")
    memory_mb: float = option(256.0, "device buffer budget, MiB; also the size of one shard", above=0)
    write_queue: int = option(2, "shards handed to the writer thread and not yet written, at most (0: each shard "
                                 "is written on the calling thread before the next chunk is computed)", min=0, cli=False)
    disk_budget_mb: float | None = option(None, "stop cleanly before the shards exceed this many MiB", above=0)
    text_field: str = option("text", "JSON field or parquet column holding the text")
    seed: int = option(0, "under torchrun: the seed of the split of the token stream among the ranks")
    progress: bool = option(True, "show a progress bar", cli=False)
    check_padding: bool = option(True, "check the first padded batch (a last, shorter context) against its sequence "
                                       "run alone (interlayer.store.guards)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # bounds and choices (check_options)
        check_storage_dtype(self.storage_dtype)

    def shard_rows(self, model: ModelAdapter, n_sites: int) -> int:
        """Rows per shard: the whole batches that fit in ``memory_mb``, at most what ``tokens`` needs.
        (Counted with ``context_length - 1`` rows per context whatever the model's BOS: this
        value is part of a cache's identity, so it stays as caches already record it.)"""
        batch_rows = self.batch_size * (self.context_length - 1)
        one_row = row_bytes(model, n_sites, resolve_storage_dtype(self.storage_dtype, model.dtype), False)
        batches_per_shard = int(self.memory_mb * 2**20 // (one_row * batch_rows))
        if batches_per_shard < 1:
            raise InterlayerError(f"memory_mb={self.memory_mb} cannot hold one batch of {batch_rows} tokens at "
                                  f"{n_sites} site(s) ({one_row * batch_rows / 2**20:.1f} MiB); raise memory_mb "
                                  "or lower batch_size or context_length")
        return min(batches_per_shard * batch_rows, math.ceil(self.tokens / batch_rows) * batch_rows)


def cache(model: ModelAdapter, data: Any, sites: str | Sequence[str | Site], out: str | Path, tokens: int | None = None,
          *, context_length: int = CONTEXT_LENGTH, batch_size: int = 8, storage_dtype: str = MODEL_DTYPE, memory_mb: float = 256.0,
          disk_budget_mb: float | None = None, text_field: str = "text", seed: int = 0, progress: bool = True,
          write_queue: int = 2, options: CacheOptions | None = None, on_shard: Callable[[int], None] | None = None,
          dtype: str | None = None, world: World | None = None) -> ActivationStore | None:
    """Write the activations of ``tokens`` tokens at ``sites`` to shards in ``out``.

    Args:
        model: the adapter to run.
        data: input text: strings, token ids, a ``.txt``/``.jsonl``/``.parquet`` path or a ``datasets.Dataset``.
        sites: site names or wildcards (``"resid_post.*"``).
        out: the cache directory (an unfinished run there is resumed).
        tokens: how many tokens to cache, BOS excluded (default 100,000).
        context_length: tokens per packed context, BOS included.
        batch_size: contexts per forward pass.
        storage_dtype: ``"model"`` (the model's dtype, the default), float32, bfloat16 or float16 (bf16, fp16).
        memory_mb: device buffer budget, MiB; also the size of one shard.
        disk_budget_mb: stop cleanly before the shards exceed this many MiB.
        text_field: JSON field or parquet column holding the text.
        seed: under torchrun, the seed of the split of the token stream among the ranks.
        progress: show a progress bar.
        write_queue: at most this many shards wait for the writer thread (0: written before the next chunk).
        options: all of the above as one :class:`CacheOptions` (then give none of them as keywords).
        on_shard: called (on the writer thread) with each shard's index once it is listed in
            the manifest; an exception it raises stops the run and is raised here.
        dtype: deprecated name of ``storage_dtype`` (a DeprecationWarning; goes in the next release).
        world: the processes that write the cache together (default: the ambient one,
            :func:`interlayer.distributed.current`; one process outside ``torchrun``).

    Documents are packed into contexts of ``context_length`` tokens (BOS, then text);
    every token but the BOS is kept. With several processes the ranks split the work and
    write one cache together (:mod:`interlayer.store.cache_ranks`); a rank that does not
    see rank 0's directory (per-node disks) gets ``None``. The manifest is rewritten
    atomically after every shard: a run that is interrupted resumes from its last whole
    shard when called again with the same options, and ends with exactly the shards an
    uninterrupted run writes.

    A manifest written for other weights or other options is refused (unless it lists
    no shard yet); a shard whose checksum fails is named in the error; a non-empty
    directory that is not an activation cache is refused. Data and sites of the wrong
    type (``None``, a dict, ``sites=3``) raise a one-line error before any model pass.
    """
    keywords = {k: v for k, v in locals().items() if not (k == "tokens" and v is None)}
    options = CacheOptions.of_call(options, keywords)
    check_inputs(data)
    check_sites(sites)
    out = check_writable(out, flag="out", directory=True)
    site_list = model.expand_sites(sites)
    identity = cache_identity(model, data, site_list, options)
    world = current() if world is None else world
    if world.distributed:
        cache_on_ranks(model, data, site_list, out, identity, options, world, on_shard)
        if not (out / MANIFEST).is_file():  # a rank on another node: rank 0's directory is not here
            return None
        return ActivationStore(out)
    manifest = _open_manifest(out, identity)
    if not manifest.get("complete"):
        _write_shards(model, data, site_list, out, manifest, options, on_shard)
    return ActivationStore(out)


def cache_identity(model: ModelAdapter, data: Any, sites: list[Site], options: CacheOptions) -> dict[str, Any]:
    """What a cache's manifest records of the run that writes it (a resumed run must match)."""
    return {
        "model": model.name, "weights_sha256": model.weights_sha256(), "sites": [s.name for s in sites],
        "select": "tokens", "dtype": dtype_name(resolve_storage_dtype(options.storage_dtype, model.dtype)), "context_length": options.context_length,
        "batch_size": options.batch_size, "shard_rows": options.shard_rows(model, len(sites)),
        "tokens_target": int(options.tokens), "data_sha256": data_fingerprint(data),
        "data": str(data) if isinstance(data, (str, Path)) else type(data).__name__, "text_field": options.text_field,
        "d_model": model.d_model,
    }


def _write_shards(model: ModelAdapter, data: Any, sites: list[Site], out: Path, manifest: dict[str, Any],
                  options: CacheOptions, on_shard: Callable[[int], None] | None) -> None:
    """Compute the chunks not yet cached and write them as shards on the writer thread
    (:class:`~interlayer.store.writer.ShardWriter`); each is listed in the manifest once whole."""
    done_rows = sum(s["rows"] for s in manifest["shards"])
    done_contexts = sum(s["contexts"] for s in manifest["shards"])
    needed = contexts_for_tokens(model, options.tokens, options.context_length)  # contexts an uninterrupted run takes
    bar = tqdm(total=options.tokens, initial=done_rows, unit="tok", unit_scale=True, disable=not options.progress,
               desc="cache")

    def job(acts: Activations, room: int) -> Callable[[], None]:
        def write() -> None:
            bar.update(write_shard(out, manifest, acts, room, options.disk_budget_mb))
            if on_shard is not None:
                on_shard(len(manifest["shards"]) - 1)

        return write

    planned, index = done_rows, len(manifest["shards"])
    try:
        if done_rows < options.tokens and needed > done_contexts:
            with ShardWriter(options.write_queue, f"the cache {out}") as writer:
                for acts in cache_chunks(model, data, sites, options, done_contexts, needed - done_contexts):
                    room = options.tokens - planned
                    writer.submit(f"shard {index} (shard_{index:05d}.safetensors)", job(acts, room))
                    planned, index = planned + min(len(acts), room), index + 1
                    del acts  # the writer holds it until it is written
                    if planned >= options.tokens:
                        break
    finally:
        bar.close()
    done_rows = sum(s["rows"] for s in manifest["shards"])
    if done_rows == 0:
        raise InterlayerError("the data produced no tokens to cache")
    if done_rows < options.tokens:
        log.warning("the data ran out after %d of %d tokens", done_rows, options.tokens)
    manifest["complete"] = True
    manifest["n_rows"] = done_rows
    write_json_atomic(out / MANIFEST, manifest)


def _open_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue (:func:`~interlayer.store.cache_files.open_manifest`): a new
    one, or a resumable one whose shards verify (shard files it does not list are removed)."""
    manifest, fresh = open_manifest(out, identity, IDENTITY_FIELDS, "use another --out directory",
                                    replace_unstarted=True)
    if fresh:
        return manifest
    remove_stale_shards(out, {s["file"] for s in manifest["shards"]})
    for shard in manifest["shards"]:
        read_shard(out / shard["file"], shard["sha256"])
    if manifest["shards"] and not manifest.get("complete"):
        log.info("resuming %s after %d shard(s)", out, len(manifest["shards"]))
    return manifest


# ------------------------------------------------------------------- store
class ActivationStore:
    """Activations cached on disk by :func:`cache`, memory-mapped.

    Each shard's sha256 is verified the first time this object opens it; a
    mismatch raises :class:`~interlayer.errors.CacheCorruptError` naming the shard.
    """

    def __init__(self, path: str | Path, model: ModelAdapter | None = None) -> None:
        self.path = Path(path)
        if not (self.path / MANIFEST).is_file():
            raise InterlayerError(f"{self.path} is not an activation cache (no {MANIFEST}); write one with "
                                  "`interlayer cache` or interlayer.cache()")
        self.manifest = read_cache_manifest(self.path)
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
        """The cached site names, canonical (``resid_post.6``), in the order they were cached."""
        return list(self.manifest["sites"])

    @property
    def n_rows(self) -> int:
        """The number of activation rows in the cache (one per cached token), over all shards."""
        return int(self.offsets[-1])

    def __len__(self) -> int:
        return self.n_rows

    @property
    def n_shards(self) -> int:
        """The number of shard files."""
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

    def verify(self) -> None:
        """Open (and so verify) every shard now: a missing or corrupt one raises
        :class:`~interlayer.errors.CacheCorruptError` naming it before any work starts."""
        for index in range(self.n_shards):
            self.shard(index)

    def check_site(self, site: str) -> str:
        """The stored name of ``site`` (short or TransformerLens form); an unknown one lists the cached sites."""
        if site in self.sites or site.startswith("meta."):
            return site
        try:
            name = parse_site(site, 1 << 30).name
        except InterlayerError:
            name = site
        if name not in self.sites:
            raise UnknownSiteError(f"site {site!r} is not in {self.path}; cached sites: {choices(self.sites)}")
        return name

    def load(self, site: str) -> torch.Tensor:
        """All rows of one site (or ``meta.*`` column) as one tensor in memory."""
        site = self.check_site(site)
        return torch.cat([self.shard(i)[site] for i in range(self.n_shards)])

    def to_frame(self) -> pd.DataFrame:
        """Row metadata (sequence, position, token_id, document) as a DataFrame."""
        keys = [k for k in self.shard(0) if k.startswith("meta.")]
        return pd.DataFrame({k.removeprefix("meta."): self.load(k).numpy() for k in keys})

    def batches(self, site: str | Sequence[str], batch_size: int, *, seed: int = 0, shuffle: bool = True,
                epochs: int = 1, start: int = 0, drop_last: bool = False, dtype: torch.dtype = torch.float32,
                device: str | torch.device | None = None, with_index: bool = False,
                part: tuple[int, int] = (0, 1), shuffle_scheme: str = "feistel") -> Iterator[Any]:
        """Yield ``[batch_size, d]`` batches of one site (``[n_sites, batch_size, d]``
        for a list of sites, the same rows at each).

        With ``shuffle`` every epoch is a seeded permutation of all rows, so a batch mixes
        rows from across the shards; the same seed gives the same batches.
        ``shuffle_scheme`` names the permutation (:func:`interlayer.io.seeding.epoch_order`):
        ``"feistel"`` (the default) evaluates a seeded bijection at each batch's positions
        only, O(batch) memory however many rows; ``"randperm"`` materialises
        ``torch.randperm`` per epoch (8 bytes a row), the order of releases before it.
        ``start`` skips that many batches, to resume a training run exactly. With
        ``with_index`` each item is ``(batch, row_index)``; see :meth:`shard_files`. With
        ``part=(rank, ranks)`` only that rank's equal slice of each batch is read
        (data-parallel training: the ranks' slices are disjoint and together are the whole
        batch). On a CUDA ``device`` the rows are gathered into pinned host memory and
        copied asynchronously (then cast to ``dtype`` on the device).
        """
        many = not isinstance(site, str)
        names = [self.check_site(s) for s in (site if many else [site])]
        if batch_size < 1:
            raise InterlayerError(f"batch_size must be at least 1, got {batch_size}")
        rank, ranks = part
        if batch_size % ranks or not 0 <= rank < ranks:
            raise InterlayerError(f"a batch of {batch_size} rows does not split into {ranks} equal parts (part {rank})")
        if ranks > 1 and not drop_last:
            raise InterlayerError("reading a part of each batch needs drop_last=True (a short last batch would not split evenly)")
        if shuffle_scheme not in SCHEMES:
            raise InterlayerError(f"unknown shuffle_scheme {shuffle_scheme!r}; valid choices: {choices(SCHEMES)}")
        share = batch_size // ranks
        n = self.n_rows
        per_epoch = n // batch_size if drop_last else math.ceil(n / batch_size)
        pinned = device is not None and torch.device(device).type == "cuda"
        first_epoch, first_batch = divmod(start, per_epoch) if per_epoch else (epochs, 0)
        for epoch in range(first_epoch, epochs):
            order = epoch_order(n, seed, epoch, scheme=shuffle_scheme) if shuffle else torch.arange(n)
            for b in range(first_batch if epoch == first_epoch else 0, per_epoch):
                index = order[b * batch_size : (b + 1) * batch_size]
                if ranks > 1:
                    index = index[rank * share : (rank + 1) * share]
                rows = [self._to(self._gather(name, index, pinned), device, dtype, pinned) for name in names]
                batch = torch.stack(rows) if many else rows[0]
                yield (batch, index) if with_index else batch

    @staticmethod
    def _to(rows: torch.Tensor, device: str | torch.device | None, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
        if pinned:  # the copy in the stored dtype, asynchronous from pinned memory; the cast on the device
            return rows.to(device=device, non_blocking=True).to(dtype)
        return rows.to(device=device, dtype=dtype)

    def shard_files(self, rows: torch.Tensor) -> list[str]:
        """The shard files holding the given global row indices."""
        shard_of = torch.searchsorted(self.offsets, rows.reshape(-1), right=True) - 1
        return [self.manifest["shards"][int(i)]["file"] for i in shard_of.unique().tolist()]

    def locate(self, row: int) -> tuple[str, int]:
        """``(shard file, row within it)`` of a global row index."""
        shard = int(torch.searchsorted(self.offsets, torch.tensor([row]), right=True)[0]) - 1
        return self.manifest["shards"][shard]["file"], int(row - self.offsets[shard])

    def _gather(self, site: str, index: torch.Tensor, pinned: bool = False) -> torch.Tensor:
        shard_of = torch.searchsorted(self.offsets, index, right=True) - 1
        out = torch.empty((index.numel(), self.manifest["d_model"]), dtype=parse_dtype(self.manifest["dtype"]),
                          pin_memory=pinned)
        for shard in shard_of.unique().tolist():
            where = (shard_of == shard).nonzero(as_tuple=True)[0]
            local = index[where] - self.offsets[shard]
            out[where] = self.shard(shard)[site][local]
        return out
