"""Layer-parallel SAE training: one SAE per site, many sites at once (``--sites resid_post.*``).

Every batch of rows is read once for all sites: from a cache, one read of the same rows
at every site; from text, one model pass that captures every site
(:class:`~interlayer.saes.sources.StreamedSource` with several sites). So training ``k``
sites costs one model pass per batch, not ``k``.

On several processes (``torchrun``) the sites are dealt round-robin to the ranks (site
``i`` to rank ``i % ranks``). From a cache each rank reads its own sites' rows. From text
the ranks share the model pass (:class:`ScatteredSource`): each runs the model on its
share of every chunk's forward batches, for every site, and each rank gathers the rows of
its own sites from all of them. The ranks step through the same batches in lockstep and
start, after an interruption, at the earliest step any rank's SAEs had reached (the others
skip the batches they have already trained on). Each rank writes the SAEs it owns
(``<out>/<site>/``); rank 0 gathers every site's metrics into ``<out>/sites.csv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from interlayer.distributed import SINGLE, World, comm_device, gather, gather_objects, raise_together
from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_atomic
from interlayer.io.seeding import epoch_permutation
from interlayer.model.adapter import ModelAdapter
from interlayer.options import str_list
from interlayer.store import text_per_context
from interlayer.store.capture import chunk_rows
from interlayer.store.collect import stream

from .checkpoint import CHECKPOINT
from .loop import TrainMember, train_saes
from .records import EvalOptions, TrainedSAE, finish_sae
from .sources import Placement, Source, SourceBatch, StreamedSource


def owned_sites(sites: list[str], world: World = SINGLE) -> list[str]:
    """The sites rank ``world.rank`` trains: site ``i`` goes to rank ``i % ranks``."""
    if len(sites) < world.size:
        raise InterlayerError(f"{len(sites)} site(s) for {world.size} ranks: layer-parallel training needs at least one "
                              f"site per rank; use at most {len(sites)} processes")
    return sites[world.rank::world.size]


class ScatteredSource(Source):
    """Streamed activations for layer-parallel training on several ranks, the model pass
    shared: every rank runs the model on its share of each chunk's forward batches
    (batch ``j`` on rank ``j % ranks``) for every site, and each rank gathers from all
    of them the rows of the sites it owns. The chunks, their row order and the seeded
    shuffle are those of :class:`~interlayer.saes.sources.StreamedSource` on one process,
    so every rank serves ``[n_own, batch, d]`` batches equal to that source's rows at its
    sites (tested). Its placement is collective: every rank reads every batch, and the
    trainer keeps the ranks in lockstep."""

    def __init__(self, inner: StreamedSource, world: World) -> None:
        self.inner, self.world = inner, world
        self.placement = Placement(world, collective=True)
        self.all_sites = list(inner.sites)
        self.sites = owned_sites(self.all_sites, world)
        self.batch_size, self.d_in, self.device, self.seed = inner.batch_size, inner.d_in, inner.device, inner.seed
        model = inner.model
        contexts = inner.forward_batch_size
        self.batch_rows = contexts * text_per_context(model, inner.context_length)
        self.per_chunk = max(1, chunk_rows(model, len(self.all_sites), inner.memory_mb) // self.batch_rows)
        """Forward batches per chunk: as :func:`interlayer.stream` cuts a one-process stream."""

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    def _my_batches(self, skip: int) -> Iterator[tuple[int, torch.Tensor, int]]:
        """This rank's forward batches from context ``skip`` on: ``(j, [n_sites, rows, d], contexts)``."""
        inner, rank, ranks = self.inner, self.world.rank, self.world.size
        for acts in stream(inner.model, inner.data, self.all_sites, select="tokens", context_length=inner.context_length,
                           batch_size=inner.forward_batch_size, rows_per_chunk=self.batch_rows, text_field=inner.text_field,
                           skip=skip, keep_batches=lambda j: j % ranks == rank, progress=False):
            j = int(acts.meta["sequence"][0]) // inner.forward_batch_size
            yield j, acts.stack(self.all_sites), acts.n_sequences

    def _chunk(self, mine: Iterator[tuple[int, torch.Tensor, int]], pending: list[Any], first: int
               ) -> tuple[torch.Tensor | None, int]:
        """The next chunk (forward batches ``first`` to ``first + per_chunk - 1``) at this
        rank's sites, ``[n_own, rows, d]``, and its contexts; ``None`` when the data ended."""
        end, have = first + self.per_chunk, []
        while True:
            item = pending.pop() if pending else next(mine, None)
            if item is None:
                break
            if item[0] >= end:
                pending.append(item)
                break
            have.append(item)
        counts = gather_objects([(j, int(x.shape[1]), n) for j, x, n in have], "sharing the chunk's batches")
        batches = sorted((j, rows, n, r) for r, part in enumerate(counts) for j, rows, n in part)
        if not batches:
            return None, 0
        rows = self._exchange(have, counts, batches)
        return rows, sum(n for _, _, n, _ in batches)

    def _exchange(self, have: list[Any], counts: list[Any], batches: list[Any]) -> torch.Tensor:
        """Every rank's batches of this chunk, at this rank's sites, in batch order."""
        where, ranks, width = comm_device(), self.world.size, max(len(part) for part in counts)
        index = {s: i for i, s in enumerate(self.all_sites)}
        received = None
        for owner in range(ranks):
            theirs = [index[s] for s in self.all_sites[owner::ranks]]
            block = torch.zeros(width, len(theirs), self.batch_rows, self.d_in, device=where)
            for k, (_, x, _) in enumerate(have):
                block[k, :, : x.shape[1]] = x[theirs].to(where, torch.float32)
            parts = [torch.empty_like(block) for _ in range(ranks)] if owner == self.world.rank else None
            gather(block, parts, owner, f"sending rank {owner} its sites' activations")
            if parts is not None:
                received = parts
        position = {}
        for r, part in enumerate(counts):
            for k, (j, rows, _) in enumerate(part):
                position[j] = (r, k, rows)
        pieces = [received[r][k, :, :rows] for j, *_ in batches for r, k, rows in [position[j]]]
        return torch.cat(pieces, dim=1).to(self.device)

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        state = dict(state or {"epoch": 0, "chunk": 0, "contexts": 0, "in_chunk": 0})
        while True:
            mine, pending = self._my_batches(state["contexts"]), []
            from_start, produced = state["contexts"] == 0, False
            while True:
                rows, n_contexts = self._chunk(mine, pending, state["contexts"] // self.inner.forward_batch_size)
                if rows is None:
                    break
                n_batches = rows.shape[1] // self.batch_size
                order = epoch_permutation(rows.shape[1], self.seed, state["epoch"], state["chunk"])
                done = dict(state, chunk=state["chunk"] + 1, contexts=state["contexts"] + n_contexts, in_chunk=0)
                for b in range(state["in_chunk"], n_batches):
                    produced = True
                    pick = order[b * self.batch_size:(b + 1) * self.batch_size]
                    after = done if b + 1 == n_batches else dict(state, in_chunk=b + 1)
                    yield SourceBatch(rows[:, pick], after, lambda i, c=state["chunk"]: f"row {i} of a batch of chunk {c}")
                state = done
            if from_start and not produced:
                raise InterlayerError(f"{self.inner.data} yields fewer tokens than one batch of {self.batch_size}")
            state = {"epoch": state["epoch"] + 1, "chunk": 0, "contexts": 0, "in_chunk": 0}


def expand_cached_sites(patterns: list[str] | str, model: Any, cached: list[str] | None) -> list[str]:
    """The sites of ``--sites`` (names or wildcards such as ``resid_post.*``; a string is
    read as a comma-separated list) that a run trains: for a cache, every cached site the
    patterns name, in the model's order."""
    patterns = str_list(patterns)
    wanted = [s.name for s in model.expand_sites(patterns)]
    if cached is None:
        return wanted
    wild = any("*" in p for p in patterns)
    missing = [s for s in wanted if s not in cached and not wild]
    if missing:
        raise InterlayerError(f"--sites names {choices(missing)}, which the cache does not hold; cached sites: "
                              f"{choices(cached)}")
    found = [s for s in wanted if s in cached]
    if not found:
        raise InterlayerError(f"--sites {','.join(patterns)!r} matches no cached site; cached sites: {choices(cached)}")
    return found


SITE_COLUMNS = ("site", "rank", "l0", "explained_variance", "nmse", "ce_loss_recovered", "dead_frac", "tokens", "seconds")
"""The columns of ``<out>/sites.csv``."""


def train_sites(source: Source, members: list[TrainMember], model: ModelAdapter, evaluation: EvalOptions, *,
                out: Path, sites: list[str], train_source: str, world: World = SINGLE) -> list[dict[str, Any]] | None:
    """Layer-parallel training of this rank's ``members`` (one SAE per owned site, each
    checkpointed in ``<out>/<site>/``) on one read of ``source`` per batch, each finished
    there (:func:`~interlayer.saes.records.finish_sae`); rank 0 returns every site's row,
    in the order of ``sites``, and writes ``<out>/sites.csv``; the other ranks ``None``."""
    own = [m.cfg.site for m in members]
    done = [s for s in own if (out / s / "metrics.json").exists() and not (out / s / CHECKPOINT).exists()]
    raise_together(InterlayerError(f"{out / done[0]} already holds a finished SAE (metrics.json); use another --out")
                   if done else None, "checking the output directories")
    rows = []
    for member, result in zip(members, train_saes(source, members, device=model.device)):
        # the checkpoints stay until every rank has saved: a rerun after a stop here finds every SAE trained
        site = member.cfg.site
        trained = TrainedSAE(result, out / site, member.options, f"{member.cfg.arch} {site}")
        metrics = finish_sae(trained, model, evaluation, train_source=train_source, keep_checkpoint=True)
        rows.append({"site": site, "rank": world.rank, **{k: metrics[k] for k in SITE_COLUMNS[2:]}})
    table = gather_site_metrics(rows, world)
    for site in own:
        (out / site / CHECKPOINT).unlink(missing_ok=True)
    if table is not None:
        order = {s: i for i, s in enumerate(sites)}
        table.sort(key=lambda r: order[r["site"]])
        write_atomic(out / "sites.csv", pd.DataFrame(table, columns=list(SITE_COLUMNS)).to_csv(index=False).encode())
    return table


def gather_site_metrics(rows: list[dict[str, Any]], world: World) -> list[dict[str, Any]] | None:
    """Every rank's per-site metric rows, on rank 0 (``None`` elsewhere)."""
    everything = gather_objects(rows, "collecting the sites' metrics")
    return [r for part in everything for r in part] if world.main else None


__all__ = ["owned_sites", "ScatteredSource", "gather_site_metrics", "expand_cached_sites", "train_sites", "SITE_COLUMNS"]
