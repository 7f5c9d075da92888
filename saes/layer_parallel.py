"""Layer-parallel SAE training: one SAE per site, many sites at once (``--sites resid_post.*``).

Every batch of rows is read once for all sites: from a cache, one read of the same rows
at every site; from text, one model pass that captures every site
(:class:`~interlayer.saes.sources.StreamedSource` with several sites). So training ``k``
sites costs one model pass per batch, not ``k``.

On several processes (``torchrun``) the sites are dealt round-robin to the ranks (site
``i`` to rank ``i % ranks``). From a cache each rank reads its own sites' rows. From text,
rank 0 runs the model once per chunk for every site and sends each rank the rows of its
sites (:class:`ScatteredSource`); the ranks step through the same batches in lockstep and
start, after an interruption, at the earliest step any rank's SAEs had reached (the others
skip the batches they have already trained on). Each rank writes the SAEs it owns
(``<out>/<site>/``); rank 0 gathers every site's metrics into ``<out>/sites.csv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from interlayer.distributed import SINGLE, World, all_reduce, broadcast_object, comm_device, gather_objects, recv, send
from interlayer.errors import InterlayerError, choices

from .sources import SourceBatch, StreamedSource

_STATE_KEYS = ("epoch", "chunk", "contexts", "in_chunk")


def owned_sites(sites: list[str], world: World = SINGLE) -> list[str]:
    """The sites rank ``world.rank`` trains: site ``i`` goes to rank ``i % ranks``."""
    if len(sites) < world.size:
        raise InterlayerError(f"{len(sites)} site(s) for {world.size} ranks: layer-parallel training needs at least one "
                              f"site per rank; use at most {len(sites)} processes")
    return sites[world.rank::world.size]


class ScatteredSource:
    """Batches of streamed activations for several ranks: rank 0 runs the model once for
    every site and sends each rank its own sites' rows (``[n_own, batch, d]``)."""

    collective = True
    """Every rank must read every batch (the trainer keeps them in lockstep)."""

    def __init__(self, inner: StreamedSource | None, sites: list[str], world: World, batch_size: int, d_in: int,
                 device: str | torch.device | None = None) -> None:
        self.inner, self.team = inner, world  # not `world`: the trainer reads that as data-parallel
        self.all_sites = list(sites)
        self.sites = owned_sites(self.all_sites, world)
        self.site = ",".join(self.sites)
        self.batch_size, self.d_in, self.device = batch_size, d_in, device
        self.seed = inner.seed if inner is not None else 0
        self._identity = broadcast_object(inner.identity() if inner is not None else None,
                                          what="sharing the streamed source's identity")

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def align(self, position: int, state: dict[str, int] | None) -> tuple[int, dict[str, int] | None]:
        """The earliest ``(position, source state)`` over the ranks: where every rank starts."""
        offers = gather_objects((position, state), "agreeing where to resume")
        return min(offers, key=lambda o: o[0])

    def any_active(self, mine: bool) -> bool:
        """Whether any rank still trains an SAE (then every rank keeps reading batches)."""
        flag = torch.tensor([1 if mine else 0], device=comm_device())
        return bool(all_reduce(flag, "max", "checking whether any rank still trains"))

    def batches(self, state: dict[str, int] | None = None, whole: bool = False) -> Iterator[SourceBatch]:
        if self.team.main:
            yield from self._send(state)
        else:
            yield from self._receive()

    def _send(self, state: dict[str, int] | None) -> Iterator[SourceBatch]:
        index = {s: i for i, s in enumerate(self.all_sites)}
        where = comm_device()
        for batch in self.inner.batches(state):
            x = batch.x if batch.x.dim() == 3 else batch.x.unsqueeze(0)
            header = torch.tensor([batch.state[k] for k in _STATE_KEYS], dtype=torch.long, device=where)
            for rank in range(1, self.team.size):
                theirs = x[[index[s] for s in self.all_sites[rank::self.team.size]]].to(where, torch.float32)
                send(header, rank, f"sending rank {rank} its position")
                send(theirs.contiguous(), rank, f"sending rank {rank} its sites' activations")
            yield SourceBatch(x[[index[s] for s in self.sites]], batch.state, batch.where)

    def _receive(self) -> Iterator[SourceBatch]:
        where = comm_device()
        while True:
            header = torch.empty(len(_STATE_KEYS), dtype=torch.long, device=where)
            rows = torch.empty(len(self.sites), self.batch_size, self.d_in, device=where)
            recv(header, 0, "receiving the position from rank 0")
            recv(rows, 0, "receiving this rank's sites' activations from rank 0")
            state = dict(zip(_STATE_KEYS, (int(v) for v in header.tolist())))
            yield SourceBatch(rows.to(self.device), state, lambda i: f"row {i} of a batch streamed by rank 0")


def expand_cached_sites(pattern: str, model: Any, cached: list[str] | None) -> list[str]:
    """The sites of ``--sites`` (comma-separated names or wildcards such as ``resid_post.*``)
    that a run trains: for a cache, every cached site the pattern names, in the model's order."""
    wanted = [s.name for s in model.expand_sites([p.strip() for p in pattern.split(",") if p.strip()])]
    if cached is None:
        return wanted
    missing = [s for s in wanted if s not in cached and "*" not in pattern]
    if missing:
        raise InterlayerError(f"--sites names {choices(missing)}, which the cache does not hold; cached sites: "
                              f"{choices(cached)}")
    found = [s for s in wanted if s in cached]
    if not found:
        raise InterlayerError(f"--sites {pattern!r} matches no cached site; cached sites: {choices(cached)}")
    return found


SITE_COLUMNS = ("site", "rank", "l0", "explained_variance", "nmse", "ce_loss_recovered", "dead_frac", "tokens", "seconds")
"""The columns of ``<out>/sites.csv``."""


def train_sites(cfg: Any, options: Any, world: World) -> list[dict[str, Any]] | None:
    """``sae train --sites``: this rank's SAEs (one per owned site) trained on one read
    per batch, each saved and evaluated in ``<out>/<site>/``; rank 0 returns every site's
    row (and writes ``<out>/sites.csv``), the others ``None``."""
    import dataclasses
    from pathlib import Path

    from interlayer.activation_cache import ActivationStore
    from interlayer.distributed import device_of, raise_together
    from interlayer.files import write_atomic

    from .records import save_trained
    from .sae import SAEConfig
    from .sources import CachedSource
    from .training import CHECKPOINT, TrainMember, train_saes

    model = dataclasses.replace(cfg, device=device_of(world, cfg.device)).load()
    store = ActivationStore(cfg.activations, model=model) if cfg.activations is not None else None
    sites = expand_cached_sites(cfg.sites, model, store.sites if store is not None else None)
    own = owned_sites(sites, world)
    if store is not None:
        error = None
        try:
            store.verify()
        except InterlayerError as err:
            error = err
        raise_together(error, f"verifying the shards of {cfg.activations}")
        source: Any = CachedSource(store, own, options.batch_size, seed=options.seed, device=model.device)
    else:
        streamed = StreamedSource(model, cfg.data, sites, options.batch_size, seed=options.seed,
                                  context_length=cfg.context_length, forward_batch_size=cfg.forward_batch_size,
                                  memory_mb=cfg.memory_mb, device=model.device)
        source = streamed if not world.distributed else ScatteredSource(
            streamed if world.main else None, sites, world, options.batch_size, model.d_model, model.device)
    out = Path(cfg.out)
    done = [s for s in own if (out / s / "metrics.json").exists() and not (out / s / CHECKPOINT).exists()]
    raise_together(InterlayerError(f"{out / done[0]} already holds a finished SAE (metrics.json); use another --out")
                   if done else None, "checking the output directories")
    members = [TrainMember(SAEConfig(d_in=model.d_model, d_sae=cfg.latents or 16 * model.d_model, arch=cfg.arch, k=cfg.k,
                                     normalization=cfg.normalization, afa_form=cfg.afa_form,
                                     authors_exact=cfg.authors_exact, model=model.name, site=site),
                           options, out / site) for site in own]
    rows = []
    for site, result in zip(own, train_saes(source, members, device=model.device)):
        # the checkpoints stay until every rank has saved: a rerun after a stop here finds every SAE trained
        metrics = save_trained(cfg, model, result, options, out / site, keep_checkpoint=True)
        rows.append({"site": site, "rank": world.rank, **{k: metrics[k] for k in SITE_COLUMNS[2:]}})
    table = gather_site_metrics(rows, world)
    for site in own:
        (out / site / CHECKPOINT).unlink(missing_ok=True)
    if table is not None:
        order = {s: i for i, s in enumerate(sites)}
        table.sort(key=lambda r: order[r["site"]])
        import pandas as pd

        write_atomic(out / "sites.csv", pd.DataFrame(table, columns=list(SITE_COLUMNS)).to_csv(index=False).encode())
    return table


def gather_site_metrics(rows: list[dict[str, Any]], world: World) -> list[dict[str, Any]] | None:
    """Every rank's per-site metric rows, on rank 0 (``None`` elsewhere)."""
    everything = gather_objects(rows, "collecting the sites' metrics")
    return [r for part in everything for r in part] if world.main else None


__all__ = ["owned_sites", "ScatteredSource", "gather_site_metrics", "expand_cached_sites", "train_sites", "SITE_COLUMNS"]
