"""Caching activations on several processes (``torchrun ... -m interlayer cache``).

**The split.** The token stream is cut into the forward batches a single process would
run (``batch_size`` packed contexts each); batch ``j`` goes to rank ``perm[j] % ranks``,
where ``perm`` is the permutation of the batches seeded by ``seed``. Every rank packs
the whole stream (tokenizing is cheap next to the model) and runs the model on its own
batches only, so the ranks share the forward passes evenly.

**Which tokens.** The first ``tokens`` tokens of the stream, as a single process caches
them: context ``c`` holds stream rows ``c * n`` onward (``n`` text tokens per context,
:func:`~interlayer.store.inputs.text_per_context`: ``context_length - 1`` with a BOS), and
the ranks drop the rows past ``tokens``. The distributed cache holds
the single-process cache's rows, in another order.

**Files.** Rank ``r`` writes ``shard_r{r:03d}_{i:05d}.safetensors`` and lists each one,
atomically after it is written, in its part file ``part_{r:03d}_of_{ranks:03d}.json``, with
the position in the stream after it. A rank that dies loses at most the shard it was
writing; the same command (same rank count and seed) resumes every rank after its last
whole shard, so no token is cached twice or lost. When every rank is done, rank 0 writes
``manifest.json`` listing every rank's shards, which :class:`~interlayer.ActivationStore`
reads like any other cache. The ranks' lists travel by a collective, so rank 0 need not
see the other ranks' files; to read the cache, their shards must be in one directory (a
shared filesystem, or copied together).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..progress import tqdm

from . import cache_files as store_files
from .inputs import contexts_for_tokens, text_per_context
from ..model.adapter import ModelAdapter
from ..distributed import World, barrier, broadcast_object, gather_objects, raise_together
from ..errors import CacheCorruptError, InterlayerError
from ..io.files import write_json_atomic
from ..io.seeding import epoch_permutation
from .shards import read_shard
from .writer import ShardWriter
from ..model.sites import Site

log = logging.getLogger(__name__)

def part_name(world: World) -> str:
    return f"part_{world.rank:03d}_of_{world.size:03d}.json"


def shard_owners(n_batches: int, ranks: int, seed: int) -> list[int]:
    """The rank that caches each forward batch: ``perm[j] % ranks`` for the permutation
    of the batches seeded by ``seed`` (each rank gets ``n_batches / ranks``, rounded)."""
    return (epoch_permutation(n_batches, seed, 0) % ranks).tolist()


def cache_on_ranks(model: ModelAdapter, data: Any, sites: list[Site], out: Path, identity: dict[str, Any],
                   options: Any, world: World, on_shard: Callable[[int], None] | None = None) -> None:
    """This rank's part of a distributed :func:`~interlayer.cache`; returns when the
    cache is complete (every rank's shards listed in ``manifest.json``)."""
    identity = {**identity, "ranks": world.size, "split_seed": options.seed}
    manifest, error = None, None
    if world.main:
        try:
            manifest = _open_manifest(out, identity)
        except InterlayerError as err:
            error = err
    raise_together(error, f"opening {out}")
    if broadcast_object(bool(manifest and manifest.get("complete")), what="sharing the manifest's state"):
        return
    part = None
    try:
        part = _open_part(out, world)
    except InterlayerError as err:
        error = err
    raise_together(error, f"checking the shards of {out}")
    _write_part(model, data, sites, out, part, options, world, on_shard)
    parts = gather_objects(part, "collecting the ranks' shard lists")
    if world.main:
        manifest["shards"] = [s for p in parts for s in p["shards"]]
        manifest["n_rows"] = sum(s["rows"] for s in manifest["shards"])
        manifest["parts"] = [{"rank": p["rank"], "shards": len(p["shards"]), "rows": sum(s["rows"] for s in p["shards"])}
                             for p in parts]
        if manifest["n_rows"] == 0:
            raise InterlayerError("the data produced no tokens to cache")
        if manifest["n_rows"] < options.tokens:
            log.warning("the data ran out after %d of %d tokens", manifest["n_rows"], options.tokens)
        manifest["complete"] = True
        write_json_atomic(out / store_files.MANIFEST, manifest)
    barrier("waiting for the manifest")


def verify_on_every_rank(store: Any) -> None:
    """Every rank opens (and so verifies) every shard of ``store`` before any work: a
    missing or corrupt shard seen by any rank stops every rank with its name."""
    error = None
    try:
        store.verify()
    except InterlayerError as err:
        error = err
    raise_together(error, f"verifying the shards of {store.path}")


def _open_manifest(out: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """Rank 0: a new manifest (the directory must be new or empty), or the one of the
    same run to resume; a cache with other options or another rank count is refused."""
    keys = (*store_files.IDENTITY_FIELDS, "ranks", "split_seed")
    return store_files.open_manifest(out, identity, keys, "resume it with the same command and rank count, or use "
                                     "another --out directory")[0]


def _open_part(out: Path, world: World) -> dict[str, Any]:
    """This rank's part file (its shards verified), or a new one; its unlisted shard
    files (written after the last update) are removed."""
    out.mkdir(parents=True, exist_ok=True)  # a rank on another node, with a disk of its own
    path = out / part_name(world)
    part = {"rank": world.rank, "ranks": world.size, "shards": [], "next_batch": 0, "complete": False}
    if path.exists():
        try:
            part = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CacheCorruptError(f"{path} is unreadable: {err}") from err
        for shard in part["shards"]:
            read_shard(out / shard["file"], shard["sha256"])
    own = re.compile(rf"^shard_r{world.rank:03d}_\d{{5}}\.safetensors(\.(\w+\.)?part)?$")
    store_files.remove_stale_shards(out, {s["file"] for s in part["shards"]}, own)
    return part


def _write_part(model: ModelAdapter, data: Any, sites: list[Site], out: Path, part: dict[str, Any], options: Any,
                world: World, on_shard: Callable[[int], None] | None) -> None:
    per_context = text_per_context(model, options.context_length)
    first = options.context_length - per_context  # the BOS row is never cached
    needed = contexts_for_tokens(model, options.tokens, options.context_length)
    n_batches = math.ceil(needed / options.batch_size)
    owners = shard_owners(n_batches, world.size, options.seed)
    budget = None if options.disk_budget_mb is None else options.disk_budget_mb / world.size
    mine = sum(1 for o in owners if o == world.rank) * options.batch_size * per_context
    bar = tqdm(total=mine, initial=sum(s["rows"] for s in part["shards"]), unit="tok", unit_scale=True,
               disable=not (options.progress and world.main), desc=f"cache (rank 0 of {world.size})")
    try:
        if not part["complete"] and part["next_batch"] < n_batches:
            skip = part["next_batch"] * options.batch_size
            chunks = store_files.cache_chunks(model, data, sites, options, skip, needed - skip,
                                              keep_batches=lambda j: j < n_batches and owners[j] == world.rank)
            prefix, index = f"shard_r{world.rank:03d}_", len(part["shards"])
            with ShardWriter(getattr(options, "write_queue", 2), f"rank {world.rank}'s part of {out}") as writer:
                for acts in chunks:
                    row = acts.meta["sequence"] * per_context + acts.meta["position"] - first
                    if int(row.max()) >= options.tokens:
                        acts = acts.rows(row < options.tokens)
                    next_batch = int(acts.meta["sequence"].max()) // options.batch_size + 1
                    writer.submit(f"shard {index} ({prefix}{index:05d}.safetensors)",
                                  _shard_job(out, part, acts, next_batch, budget, world, bar, on_shard))
                    index += 1
                    del acts  # the writer holds it until it is written
    finally:
        bar.close()
    part["complete"] = True
    write_json_atomic(out / part_name(world), part)


def _shard_job(out: Path, part: dict[str, Any], acts: Any, next_batch: int, budget: float | None, world: World,
               bar: Any, on_shard: Callable[[int], None] | None) -> Callable[[], None]:
    """The writer thread's job for one chunk: the shard, then the part file listing it with
    the stream position after it (``next_batch``), so the part file only ever names whole shards."""
    def write() -> None:
        part["next_batch"] = next_batch
        rows = store_files.write_shard(out, part, acts, len(acts), budget, prefix=f"shard_r{world.rank:03d}_",
                                       manifest_file=part_name(world))
        bar.update(rows)
        if on_shard is not None:
            on_shard(len(part["shards"]) - 1)

    return write
