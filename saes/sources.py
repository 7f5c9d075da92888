"""Where an SAE's training activations come from: both read the activation store.

* :class:`CachedSource`: shards written by :func:`interlayer.cache`, in seeded
  shuffled batches that mix across shards.
* :class:`StreamedSource`: activations computed on the fly by
  :func:`interlayer.stream` from packed contexts of text, one bounded chunk at a time;
  each chunk's rows are shuffled with a seed of (seed, epoch, chunk) and served in
  whole batches (a chunk's last ``< batch_size`` rows are dropped).

Each batch comes with the source's position after it (``state``), a small dict that
the trainer checkpoints; ``batches(state)`` resumes exactly there. A streamed source
skips the contexts of finished chunks without running the model and recomputes only
the chunk it was in.

What the trainer reads of a source is declared by the :class:`Source` protocol, which
every source class here (and :class:`~interlayer.saes.layer_parallel.ScatteredSource`)
implements; how the ranks of a distributed run share its batches is its
:class:`Placement`, given to it explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch

from interlayer.store.cache import ActivationStore
from interlayer.store.collect import stream
from interlayer.model.adapter import ModelAdapter
from interlayer.distributed import SINGLE, World, all_reduce, comm_device, gather_objects, split_evenly
from interlayer.errors import InterlayerError
from interlayer.io.files import sha256_bytes
from interlayer.io.seeding import FEISTEL, SCHEMES, epoch_permutation
from interlayer.store.prefetch import prefetched


class SourceBatch(NamedTuple):
    x: torch.Tensor
    """``[batch_size, d_in]`` activations."""
    state: dict[str, int]
    """The source's position after this batch."""
    where: Callable[[int], str]
    """Where row ``i`` of the batch came from, for error messages (a shard file and row,
    a tensor row, or a context and position)."""


@dataclass(frozen=True)
class Placement:
    """How the ranks of a training run share a source's batches, given explicitly to the
    source that serves them (one process: the default)."""

    world: World = SINGLE
    """The processes training together."""
    split: bool = False
    """Each rank reads its own equal part of every global batch (data-parallel training:
    the gradients, the fired latents and the loss terms are averaged over the ranks, and
    rank 0 alone writes checkpoints)."""
    collective: bool = False
    """Every rank reads every batch, in lockstep (layer-parallel training: each rank trains
    and writes its own SAEs, and the ranks start together at the earliest position any
    rank's SAEs had reached)."""

    def __post_init__(self) -> None:
        if self.split and self.collective:
            raise InterlayerError("a placement either splits each batch over the ranks (data-parallel) or has every "
                                  "rank read every batch (collective), not both")

    @property
    def data_parallel(self) -> bool:
        """Whether the ranks train one SAE together on their parts of each batch."""
        return self.split and self.world.distributed

    @property
    def trainers(self) -> World:
        """The world the SAEs' training spans: the ranks of a data-parallel run, else this process."""
        return self.world if self.data_parallel else SINGLE

    def part(self, batch_size: int) -> int:
        """The rows of a global batch of ``batch_size`` this rank reads."""
        return split_evenly(batch_size, self.world, "the global batch") if self.split else batch_size

    def align(self, position: int, state: dict[str, int] | None) -> tuple[int, dict[str, int] | None]:
        """The earliest ``(position, source state)`` over the ranks of a collective
        placement (where every rank starts); this rank's own otherwise."""
        if not (self.collective and self.world.distributed):
            return position, state
        offers = gather_objects((position, state), "agreeing where to resume")
        return min(offers, key=lambda o: o[0])

    def any_active(self, mine: bool) -> bool:
        """Whether any rank of a collective placement still trains an SAE (then every rank
        keeps reading batches); this rank's own flag otherwise."""
        if not (self.collective and self.world.distributed):
            return mine
        flag = torch.tensor([1 if mine else 0], device=comm_device())
        return bool(all_reduce(flag, "max", "checking whether any rank still trains"))


@runtime_checkable
class Source(Protocol):
    """What the SAE trainer reads of a source of training activations."""

    d_in: int
    """The activations' width."""
    batch_size: int
    """Rows of each (global) batch."""
    sites: list[str]
    """The sites it serves: one (batches ``[batch_size, d_in]``) or several (``[n_sites,
    batch_size, d_in]``, the same rows at each site)."""
    placement: Placement
    """How the ranks share its batches."""

    def identity(self) -> dict[str, Any]:
        """What a resumed run must share with the run that wrote its checkpoint."""
        ...

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        """Batches from position ``state`` (the start: ``None``) on; ``whole``: the global
        batches even where this rank reads only its part (the trainer's initial statistics)."""
        ...


class TensorSource(Source):
    """Training batches from activations already in memory (e.g. ``collect(...)[site]``):
    seeded epoch-wise permutations, whole batches only."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int = 0, site: str = "tensor",
                 device: str | torch.device | None = None) -> None:
        if rows.dim() != 2:
            raise InterlayerError(f"rows must be [n, d_in], got shape {tuple(rows.shape)}")
        if rows.shape[0] < batch_size:
            raise InterlayerError(f"{rows.shape[0]} rows are fewer than one batch of {batch_size}")
        self.rows = rows
        self.batch_size = batch_size
        self.seed = seed
        self.sites = [site]
        self.placement = Placement()
        self.device = device
        self.d_in = int(rows.shape[1])

    def identity(self) -> dict[str, Any]:
        """The tensor's sha256 (of its float32 values), site, seed and batch size: a resumed run must
        read the same rows.
        """
        digest = sha256_bytes(self.rows.detach().float().cpu().contiguous().numpy().tobytes())
        return {"kind": "tensor", "site": self.sites[0], "rows_sha256": digest, "seed": self.seed,
                "batch_size": self.batch_size}

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        """Endless ``[batch_size, d_in]`` batches of seeded per-epoch permutations of the rows, whole
        batches only, from ``state`` (``{"batches": done}``; ``None``: the start) on. ``whole`` changes
        nothing (a tensor source is never split over ranks).
        """
        done = (state or {}).get("batches", 0)
        per_epoch = self.rows.shape[0] // self.batch_size
        while True:
            epoch, offset = divmod(done, per_epoch)
            order = epoch_permutation(self.rows.shape[0], self.seed, epoch)
            index = order[offset * self.batch_size:(offset + 1) * self.batch_size]
            done += 1
            yield SourceBatch(self.rows[index].to(self.device), {"batches": done},
                              lambda i, index=index: f"row {int(index[i])} of the tensor")


class CachedSource(Source):
    """Training batches from a cached :class:`~interlayer.ActivationStore`.

    With a distributed ``world`` (data-parallel: ``Placement(world, split=True)``) every
    rank reads only its own equal slice of each global batch of ``batch_size`` rows (the
    slices are disjoint, so every row is read once per epoch by one rank);
    ``batches(whole=True)`` serves the global batches (the trainer's initial statistics,
    the same on every rank).

    ``shuffle`` names the order of each epoch's rows (:func:`interlayer.io.seeding.epoch_order`):
    ``"feistel"`` (new runs; O(batch) memory, recorded in :meth:`identity` as
    ``"shuffle": "feistel-v1"``) or ``"randperm"`` (the order before it, 8 bytes a row per
    epoch; its identity records no ``shuffle``, as the checkpoints written then do, so they
    resume with ``shuffle="randperm"``, and a resume under the other scheme is refused
    naming ``source.shuffle``). ``prefetch`` batches are gathered (and copied to the
    device, from pinned memory on CUDA) ahead on a background thread while the caller
    trains on the current one; 0 reads each batch when asked. The batches and their
    order are the same either way."""

    def __init__(self, store: ActivationStore | str | Path, site: str | list[str], batch_size: int, seed: int = 0,
                 device: str | torch.device | None = None, world: World = SINGLE, shuffle: str = "feistel",
                 prefetch: int = 2) -> None:
        if shuffle not in SCHEMES:
            raise InterlayerError(f"unknown shuffle {shuffle!r}; valid choices: {', '.join(map(repr, SCHEMES))}")
        if prefetch < 0:
            raise InterlayerError(f"prefetch must be at least 0, got {prefetch}")
        self.shuffle = shuffle
        self.prefetch = prefetch
        self.store = store if isinstance(store, ActivationStore) else ActivationStore(store)
        self.sites = [self.store.check_site(s) for s in ([site] if isinstance(site, str) else site)]
        if world.distributed and len(self.sites) > 1:
            raise InterlayerError("data-parallel training reads one site; several sites are trained layer-parallel")
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.placement = Placement(world, split=True)
        self.local_batch_size = self.placement.part(batch_size)
        self.d_in = int(self.store.manifest["d_model"])
        if self.store.n_rows < batch_size:
            raise InterlayerError(f"{self.store.path} holds {self.store.n_rows} rows, fewer than one batch of {batch_size}")

    def identity(self) -> dict[str, Any]:
        """The store's model, weights checksum, row count and shard checksums, with the site(s), seed and batch size."""
        m = self.store.manifest
        identity = {"kind": "cached", "site": self._site_key(), "model": m["model"], "weights_sha256": m["weights_sha256"],
                    "rows": self.store.n_rows, "shards": [s["sha256"] for s in m["shards"]], "seed": self.seed,
                    "batch_size": self.batch_size}
        if self.shuffle == "feistel":  # runs before the lazy order recorded none: they read randperm's
            identity["shuffle"] = FEISTEL
        return identity

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        """Endless seeded epochs of the store's rows from ``state`` (``{"batches": done}``; ``None``:
        the start) on: ``[local_batch_size, d_in]`` (``[n_sites, ..., d_in]`` for several sites, the
        same rows at each), this rank's slice of each global batch; ``whole``: the global batches.
        """
        done = (state or {}).get("batches", 0)
        world = self.placement.world
        part = (0, 1) if whole else (world.rank, world.size)
        read = self.sites[0] if len(self.sites) == 1 else self.sites  # several: [n_sites, batch, d], the same rows
        reads = self.store.batches(read, self.batch_size, seed=self.seed, epochs=1 << 20, start=done, drop_last=True,
                                   device=self.device, with_index=True, part=part, shuffle_scheme=self.shuffle)
        with closing(prefetched(reads, self.prefetch)) as ahead:  # the thread stops with this generator
            for x, index in ahead:
                done += 1
                yield SourceBatch(x, {"batches": done}, lambda i, index=index: self._where(int(index[i])))

    def _site_key(self) -> str | list[str]:
        """The identity's site: the name for one site (as before), the list for several."""
        return self.sites[0] if len(self.sites) == 1 else self.sites

    def _where(self, row: int) -> str:
        file, local = self.store.locate(row)
        return f"row {local} of shard {file} in {self.store.path}"


class StreamedSource(Source):
    """Training batches computed on the fly from text by the activation store."""

    def __init__(self, model: ModelAdapter, data: Any, site: str | list[str], batch_size: int, seed: int = 0,
                 context_length: int = 128, forward_batch_size: int = 8, memory_mb: float = 256.0,
                 text_field: str = "text", device: str | torch.device | None = None) -> None:
        self.model = model
        self.data = data
        self.sites = [model.site(s).name for s in ([site] if isinstance(site, str) else site)]
        self.placement = Placement()
        self.batch_size = batch_size
        self.seed = seed
        self.context_length = context_length
        self.forward_batch_size = forward_batch_size
        self.memory_mb = memory_mb
        self.text_field = text_field
        self.device = device
        self.d_in = model.d_model

    def identity(self) -> dict[str, Any]:
        """The model, its weights checksum, the data's fingerprint, the site(s), seed, batch size and
        the forward-pass settings.
        """
        from interlayer.store.inputs import data_fingerprint

        return {"kind": "streamed", "site": self.sites[0] if len(self.sites) == 1 else self.sites, "model": self.model.name,
                "weights_sha256": self.model.weights_sha256(), "data_sha256": data_fingerprint(self.data),
                "seed": self.seed, "batch_size": self.batch_size, "context_length": self.context_length,
                "forward_batch_size": self.forward_batch_size, "memory_mb": self.memory_mb}

    def _chunks(self, skip: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor], int]]:
        # one forward pass per batch serves every site
        for acts in stream(self.model, self.data, self.sites, select="tokens", context_length=self.context_length,
                           batch_size=self.forward_batch_size, memory_mb=self.memory_mb, text_field=self.text_field,
                           skip=skip, output_device="model", progress=False):
            rows = acts[self.sites[0]] if len(self.sites) == 1 else acts.stack(self.sites)
            yield rows, acts.meta, acts.n_sequences

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        """Endless ``[batch_size, d_in]`` batches (``[n_sites, batch_size, d_in]`` for several sites)
        computed from the text, each forward chunk's rows shuffled (seeded by epoch and chunk);
        ``state`` (epoch, chunk, contexts, in_chunk; ``None``: the start) says where to resume.
        ``whole`` changes nothing (one process reads every batch).
        """
        state = dict(state or {"epoch": 0, "chunk": 0, "contexts": 0, "in_chunk": 0})
        while True:
            from_start, produced = state["contexts"] == 0, False
            for rows, meta, n_contexts in self._chunks(state["contexts"]):
                n_rows = rows.shape[-2]
                n_batches = n_rows // self.batch_size
                order = epoch_permutation(n_rows, self.seed, state["epoch"], state["chunk"])
                first = state["contexts"]
                for b in range(state["in_chunk"], n_batches):
                    produced = True
                    index = order[b * self.batch_size:(b + 1) * self.batch_size]
                    after = dict(state, in_chunk=b + 1)
                    if b + 1 == n_batches:
                        after = dict(state, chunk=state["chunk"] + 1, contexts=first + n_contexts, in_chunk=0)
                    yield SourceBatch(rows[..., index, :].to(self.device), after,
                                      lambda i, index=index, meta=meta: self._where(meta, int(index[i])))
                state = dict(state, chunk=state["chunk"] + 1, contexts=first + n_contexts, in_chunk=0)
            if from_start and not produced:
                raise InterlayerError(f"{self.data} yields fewer tokens than one batch of {self.batch_size}")
            state = {"epoch": state["epoch"] + 1, "chunk": 0, "contexts": 0, "in_chunk": 0}

    def _where(self, meta: dict[str, torch.Tensor], row: int) -> str:
        return (f"context {int(meta['sequence'][row])}, position {int(meta['position'][row])} "
                f"(document {int(meta['document'][row])}) of {self.data}")
