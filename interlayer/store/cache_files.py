"""The files of an activation cache directory, shared by the single-process writer
(:mod:`interlayer.store.cache`) and the distributed one
(:mod:`interlayer.store.cache_ranks`): the manifest, shard writing, and the removal of
shard files a run wrote after its last manifest update."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from .collect import Activations
from ..errors import CacheCorruptError
from ..io.files import WriteError, write_atomic, write_json_atomic
from .shards import DiskBudgetError, encode_shard

MANIFEST = "manifest.json"
STORE_FORMAT = 1
SHARD_FILE = re.compile(r"^shard_\d{5}\.safetensors(\.(\w+\.)?part)?$")
"""Names of the single-process writer's shards (and their ``.<random>.part`` files)."""
IDENTITY_FIELDS = ("sites", "select", "dtype", "context_length", "batch_size", "shard_rows", "tokens_target",
                   "data_sha256", "text_field", "d_model")
"""Manifest fields a resumed run must share."""


def read_manifest(out: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{out / MANIFEST} is missing or unreadable: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CacheCorruptError(f"{out / MANIFEST} has format {got!r}, expected {STORE_FORMAT}")
    return manifest



def remove_stale_shards(out: Path, listed: set[str], pattern: re.Pattern[str] = SHARD_FILE) -> None:
    """Delete shard files this store wrote after its last manifest update (and ``.part``
    files); nothing that is not named like a shard (``pattern``) is touched."""
    for stale in out.iterdir():
        if pattern.match(stale.name) and stale.name not in listed and stale.is_file():
            stale.unlink()



def write_shard(out: Path, manifest: dict[str, Any], acts: Activations, room: int,
                 disk_budget_mb: float | None, prefix: str = "shard_", manifest_file: str = MANIFEST) -> int:
    """Write the first ``room`` rows of ``acts`` as the next shard and list it in
    ``manifest`` (rewritten atomically to ``manifest_file``); returns the rows written."""
    keep = min(len(acts), room)
    tensors = {k: v[:keep] for k, v in acts.tensors.items()}
    meta = {f"meta.{k}": v[:keep] for k, v in acts.meta.items()}
    index = len(manifest["shards"])
    payload = encode_shard({**tensors, **meta}, {"shard": str(index)})
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
    name = f"{prefix}{index:05d}.safetensors"
    try:
        sha = write_atomic(out / name, payload)
    except WriteError as err:
        raise DiskBudgetError(f"{err}; {out} keeps the whole shards written before, and the same command resumes") from err
    manifest["shards"].append({"file": name, "rows": keep, "contexts": acts.n_sequences, "sha256": sha,
                               "bytes": len(payload)})
    manifest["n_rows"] = sum(s["rows"] for s in manifest["shards"])
    write_json_atomic(out / manifest_file, manifest)
    return keep
