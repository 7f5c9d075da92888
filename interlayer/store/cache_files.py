"""The files of an activation cache directory, shared by the single-process writer
(:mod:`interlayer.store.cache`) and the distributed one
(:mod:`interlayer.store.cache_ranks`): the manifest, shard writing, and the removal of
shard files a run wrote after its last manifest update."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import CacheCorruptError, InterlayerError, choices
from ..io.files import MANIFEST, WriteError, write_json_atomic
from ..model.adapter import ModelAdapter
from ..model.sites import Site
from .collect import Activations, stream
from .shards import DiskBudgetError, shard_layout, write_shard_file

log = logging.getLogger(__name__)

STORE_FORMAT = 1
SHARD_FILE = re.compile(r"^shard_\d{5}\.safetensors(\.(\w+\.)?part)?$")
"""Names of the single-process writer's shards (and their ``.<random>.part`` files)."""
IDENTITY_FIELDS = ("sites", "select", "dtype", "context_length", "batch_size", "shard_rows", "tokens_target",
                   "data_sha256", "text_field", "d_model")
"""Manifest fields a resumed run must share."""

__all__ = ["IDENTITY_FIELDS", "MANIFEST", "STORE_FORMAT", "cache_chunks", "open_manifest", "read_cache_manifest",
           "read_manifest", "remove_stale_shards", "write_shard"]


def read_cache_manifest(out: Path) -> dict[str, Any]:
    """The manifest of the activation cache ``out``; :class:`CacheCorruptError` if it is
    missing, unreadable or of another format."""
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{out / MANIFEST} is missing or unreadable: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CacheCorruptError(f"{out / MANIFEST} has format {got!r}, expected {STORE_FORMAT}")
    return manifest


def read_manifest(out: Path) -> dict[str, Any]:
    """The old name of :func:`read_cache_manifest` (one release, with a DeprecationWarning;
    the conversion cache's is :func:`interlayer.model.conversion_cache.read_entry_manifest`)."""
    warnings.warn("interlayer.store.cache_files.read_manifest is renamed read_cache_manifest", DeprecationWarning,
                  stacklevel=2)
    return read_cache_manifest(out)


def open_manifest(out: Path, identity: dict[str, Any], keys: Sequence[str], advice: str,
                  replace_unstarted: bool = False) -> tuple[dict[str, Any], bool]:
    """The manifest a cache run continues in ``out``, for the single-process writer and
    the distributed one alike: ``(manifest, True)`` for a new one (written at once; the
    directory must be new or empty), or ``(manifest, False)`` for the one there, when it
    was written for the same weights and with the same ``keys`` as ``identity`` (otherwise
    refused, naming what differs, followed by ``advice``; a cache of several processes is
    never resumed by one). With
    ``replace_unstarted``, a manifest that lists no shard yet is replaced by a new one."""
    path = out / MANIFEST
    fresh = {"format": STORE_FORMAT, **identity, "shards": [], "n_rows": 0, "complete": False}
    if not path.exists():
        foreign = sorted(p.name for p in out.iterdir()) if out.exists() else []
        if foreign:
            raise InterlayerError(f"{out} is not empty and holds no activation cache ({len(foreign)} entries, e.g. "
                                  f"{choices(foreign[:3])}); give a new or empty directory")
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, fresh)
        return fresh, True
    manifest = read_cache_manifest(out)
    _refuse_other_ranks(path, manifest, identity)
    if replace_unstarted and not manifest["shards"] and not manifest.get("complete"):
        if any(manifest.get(k) != identity.get(k) for k in ("weights_sha256", *keys)):
            log.info("replacing %s: it lists no shard yet", path)
        remove_stale_shards(out, set())
        write_json_atomic(path, fresh)
        return fresh, True
    if manifest.get("weights_sha256") != identity["weights_sha256"]:
        raise InterlayerError(
            f"{path} was written for model {manifest.get('model')!r} (weights sha256 "
            f"{str(manifest.get('weights_sha256'))[:12]}...), not {identity['model']!r} "
            f"({identity['weights_sha256'][:12]}...); use another --out directory")
    differing = [k for k in keys if manifest.get(k) != identity.get(k)]
    if differing:
        detail = "; ".join(f"{k}: {manifest.get(k)!r} there, {identity.get(k)!r} now" for k in differing)
        raise InterlayerError(f"{path} was written with other options ({detail}); {advice}")
    return manifest, False


def _refuse_other_ranks(path: Path, manifest: dict[str, Any], identity: dict[str, Any]) -> None:
    """A cache written by several processes (``ranks``) is resumed by as many, not by one."""
    ranks = manifest.get("ranks")
    if ranks and not identity.get("ranks"):
        raise InterlayerError(f"{path} belongs to a cache written by {ranks} processes; run the same command under "
                              f"`torchrun --nproc-per-node {ranks}` to resume it (or read it with ActivationStore once "
                              "complete), or use another --out directory")


def cache_chunks(model: ModelAdapter, data: Any, sites: list[Site], options: Any, skip: int, limit: int,
                 keep_batches: Callable[[int], bool] | None = None) -> Iterator[Activations]:
    """The chunks a cache writer stores: the token rows of packed contexts ``skip`` to
    ``skip + limit - 1`` at ``sites``, cut as ``options`` (a
    :class:`~interlayer.store.cache.CacheOptions`) sets, each chunk one shard."""
    return stream(model, data, sites, select="tokens", context_length=options.context_length,
                  batch_size=options.batch_size, storage_dtype=options.storage_dtype, memory_mb=options.memory_mb,
                  text_field=options.text_field, skip=skip, limit=limit, progress=False, keep_batches=keep_batches,
                  check_padding=options.check_padding)


def remove_stale_shards(out: Path, listed: set[str], pattern: re.Pattern[str] = SHARD_FILE) -> None:
    """Delete shard files this store wrote after its last manifest update (and ``.part``
    files); nothing that is not named like a shard (``pattern``) is touched."""
    for stale in out.iterdir():
        if pattern.match(stale.name) and stale.name not in listed and stale.is_file():
            stale.unlink()



def write_shard(out: Path, manifest: dict[str, Any], acts: Activations, room: int,
                 disk_budget_mb: float | None, prefix: str = "shard_", manifest_file: str = MANIFEST) -> int:
    """Write the first ``room`` rows of ``acts`` as the next shard (atomically, fsynced:
    :func:`~interlayer.store.shards.write_shard_file`), then list it in ``manifest``
    (rewritten atomically to ``manifest_file``); returns the rows written."""
    keep = min(len(acts), room)
    tensors = {k: v[:keep] for k, v in acts.tensors.items()}
    meta = {f"meta.{k}": v[:keep] for k, v in acts.meta.items()}
    index = len(manifest["shards"])
    layout = shard_layout({**tensors, **meta}, {"shard": str(index)})
    used = sum(s["bytes"] for s in manifest["shards"])
    if disk_budget_mb is not None and used + layout.nbytes > disk_budget_mb * 2**20:
        raise DiskBudgetError(
            f"disk budget of {disk_budget_mb} MiB exhausted: {used / 2**20:.1f} MiB written in "
            f"{index} shard(s), the next needs {layout.nbytes / 2**20:.1f} MiB; {out} keeps the whole shards, "
            "and a run with a larger budget resumes from them")
    free = shutil.disk_usage(out).free
    if layout.nbytes + 2**20 > free:
        raise DiskBudgetError(f"not enough free disk for shard {index} of {out}: it needs "
                              f"{layout.nbytes / 2**20:.1f} MiB and {free / 2**20:.1f} MiB are free")
    name = f"{prefix}{index:05d}.safetensors"
    try:
        sha = write_shard_file(out / name, layout)
    except WriteError as err:
        raise DiskBudgetError(f"{err}; {out} keeps the whole shards written before, and the same command resumes") from err
    manifest["shards"].append({"file": name, "rows": keep, "contexts": acts.n_sequences, "sha256": sha,
                               "bytes": layout.nbytes})
    manifest["n_rows"] = sum(s["rows"] for s in manifest["shards"])
    write_json_atomic(out / manifest_file, manifest)
    return keep
