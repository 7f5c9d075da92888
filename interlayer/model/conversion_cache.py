"""The model-conversion cache: atomic, checksummed directories under ``$INTERLAYER_CACHE``
(where embedded GGUF models are converted once into safetensors checkpoints).
Not to be confused with the activation cache (:mod:`interlayer.store.cache`).

A cached entry is a directory holding a ``manifest.json`` that records a sha256 for
every other file. Entries are built in a temporary sibling directory and renamed
into place, so a reader sees either no entry or a complete one; an entry whose
files do not match their checksums is reported as corrupt and never used.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CacheCorruptError
from ..io.files import MANIFEST, sha256_file, write_json_atomic

__all__ = ["MANIFEST", "build_entry", "cache_root", "read_entry_manifest", "read_manifest", "verify_entry"]


def cache_root() -> Path:
    """``$INTERLAYER_CACHE``, or ``~/.cache/interlayer``."""
    return Path(os.environ.get("INTERLAYER_CACHE") or Path.home() / ".cache" / "interlayer").expanduser()


def read_entry_manifest(entry: Path) -> dict[str, Any]:
    """The manifest of a conversion-cache entry; :class:`CacheCorruptError` if missing or
    unreadable. (An activation cache's is :func:`interlayer.store.cache_files.read_cache_manifest`.)"""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheCorruptError(f"cache entry {entry} has no readable {MANIFEST}: {err}") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CacheCorruptError(f"cache entry {entry} has a malformed {MANIFEST}")
    return manifest


def read_manifest(entry: Path) -> dict[str, Any]:
    """The old name of :func:`read_entry_manifest` (one release, with a DeprecationWarning)."""
    warnings.warn("interlayer.model.conversion_cache.read_manifest is renamed read_entry_manifest", DeprecationWarning,
                  stacklevel=2)
    return read_entry_manifest(entry)


def verify_entry(entry: Path) -> dict[str, Any]:
    """Check every file of ``entry`` against its manifest checksum.

    Returns the manifest. Raises :class:`CacheCorruptError` naming the first file
    that is missing, of the wrong size, or has the wrong sha256.
    """
    manifest = read_entry_manifest(entry)
    for name, record in manifest["files"].items():
        path = entry / name
        if not path.is_file():
            raise CacheCorruptError(f"cache entry {entry} is missing {name}")
        if path.stat().st_size != record["size"]:
            raise CacheCorruptError(f"cache file {path} has {path.stat().st_size} bytes, expected {record['size']}")
        if sha256_file(path) != record["sha256"]:
            raise CacheCorruptError(f"cache file {path} fails its sha256 checksum")
    return manifest


def build_entry(entry: Path, write: Callable[[Path], None], meta: dict[str, Any]) -> dict[str, Any]:
    """Build a cache entry atomically.

    ``write(tmp_dir)`` fills a temporary directory beside ``entry``; a manifest with
    ``meta`` and each file's size and sha256 is added, and the directory is renamed
    to ``entry`` (replacing a corrupt one). If ``write`` fails, nothing is left.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    try:
        write(tmp)
        files = {
            str(path.relative_to(tmp)): {"size": path.stat().st_size, "sha256": sha256_file(path)}
            for path in sorted(tmp.rglob("*"))
            if path.is_file()
        }
        manifest = {**meta, "files": files}
        write_json_atomic(tmp / MANIFEST, manifest)
        if entry.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=entry.parent))
            os.replace(entry, trash / entry.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process finished the same entry first; keep theirs if it is whole.
            verify_entry(entry)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
