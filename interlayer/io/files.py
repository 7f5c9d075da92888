"""Files: atomic writes and sha256 checksums, the one place every module writes through.

A write goes to a temporary file of a unique name beside its target
(``<name>.<random>.part``, so no file of the user's is ever replaced by it), is fsynced
and renamed over the target, so a reader sees either the old file or the whole new one,
never a torn one; on any failure the temporary file is removed and the error names the
target. Missing parent directories are created first, so an ``--out`` inside a new
folder passes :func:`check_writable` and is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from pathlib import Path
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

from ..errors import InterlayerError

_CHUNK = 8 * 2**20

MANIFEST = "manifest.json"
"""The file name of every manifest the toolkit writes: an activation cache's
(:mod:`interlayer.store.cache_files`) and a conversion-cache entry's
(:mod:`interlayer.model.conversion_cache`)."""


class WriteError(InterlayerError):
    """A file could not be written (no space, read-only filesystem, a directory in the way...)."""


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_file(path: str | os.PathLike) -> tuple[int, Path]:
    """A new file of a unique name beside ``path`` (``<name>.<random>.part``), created
    exclusively (an existing file is never reused) with the usual permissions, its parent
    directories made first; returns its open descriptor and its path. The caller writes it
    and renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def write_atomic_with(path: str | os.PathLike, write: Callable[[BinaryIO], None], nbytes: int, *,
                      buffering: int = -1, after_sync: Callable[[int], None] | None = None) -> None:
    """Write ``path`` atomically by calling ``write(handle)`` on a temporary file beside it,
    then flush, fsync (and ``after_sync(descriptor)``, e.g. to drop the written pages from the
    page cache) and rename it into place, creating the parent directories. On any failure (a
    full disk included) no partial file is left behind and :class:`WriteError` names the file,
    its size (``nbytes``) and the cause."""
    path = Path(path)
    tmp: Path | None = None
    try:
        descriptor, tmp = temporary_file(path)
        with open(descriptor, "wb", buffering=buffering) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            if after_sync is not None:
                after_sync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise WriteError(f"could not write {path} ({nbytes / 2**20:.1f} MiB): {err.strerror or err}") from err


def write_atomic(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically, creating its parent directories; returns its
    sha256. On any failure (a full disk included) no partial file is left behind."""
    write_atomic_with(path, lambda handle: handle.write(data), len(data))
    return sha256_bytes(data)


def write_safetensors_atomic(path: str | os.PathLike, tensors: Mapping[str, Any],
                             metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` (contiguous torch tensors) to ``path`` as safetensors, atomically:
    streamed from the tensors' own memory into a temporary file beside ``path``, fsynced
    and renamed into place. Unlike ``write_atomic(path, safetensors.torch.save(...))`` no
    copy of the file is held in memory (``save`` holds two: 2 GiB more for an SAE checkpoint
    with Adam's state at d 2,304 x 18,432). On failure no partial file is left behind and
    :class:`WriteError` names the file."""
    from safetensors.torch import save_file

    path = Path(path)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    tmp: Path | None = None
    try:
        descriptor, tmp = temporary_file(path)
        os.close(descriptor)
        save_file(dict(tensors), str(tmp), metadata=metadata)
        descriptor = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(tmp, path)
    except Exception as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            cause = err.strerror if isinstance(err, OSError) and err.strerror else err
            raise WriteError(f"could not write {path} ({nbytes / 2**20:.1f} MiB): {cause}") from err
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any) -> str:
    """``payload`` as indented, key-sorted JSON, written atomically; returns its sha256."""
    return write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode())


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """UTF-8 text written atomically; returns its sha256."""
    return write_atomic(path, text.encode("utf-8"))


def check_writable(path: str | os.PathLike, *, flag: str = "--out", suffixes: tuple[str, ...] = (),
                   directory: bool = False) -> Path:
    """Check, before any long computation, that ``path`` can be written.

    For a file: its extension is one of ``suffixes`` (when given), it is not an
    existing directory, and its parent is a writable directory or can be made in its
    nearest existing ancestor (the writers here create missing parents).
    For a ``directory``: it is not an existing file, and it or its nearest existing
    ancestor is writable. Raises :class:`WriteError` naming the path and the problem.
    """
    path = Path(path).expanduser()
    if suffixes and not directory and path.suffix.lower() not in suffixes:
        raise WriteError(f"{flag} {str(path)!r}: unknown extension {path.suffix or '(none)'!r}; "
                         f"valid choices: {', '.join(repr(s) for s in suffixes)}")
    if directory:
        if path.exists() and not path.is_dir():
            raise WriteError(f"{flag} {str(path)!r} is a file, not a directory")
        target = path
    else:
        if path.is_dir():
            raise WriteError(f"{flag} {str(path)!r} is a directory; give a file path")
        target = path.parent
    existing = target
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise WriteError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, not a directory")
    try:  # a real probe: permission bits say little to root, and nothing of read-only mounts
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as err:
        raise WriteError(f"{flag} {str(path)!r}: {str(existing)!r} is not writable ({err.strerror or err})") from None
    return path
