"""What every on-disk SAE format module under :mod:`interlayer.saes.formats` provides: a
:class:`Reader`, found by :func:`readers` (each module's ``READERS``), so
:func:`interlayer.saes.load` tells formats apart by their files' *content* and names every
format it tried when none fits.

A reader's ``match(path)`` returns ``None`` when ``path`` (a file or a folder) holds one
SAE in its format, else a short reason (``"no params.npz"``, ``"cfg.json has no
'expansion_factor'"``). ``read(path)`` returns an :class:`~interlayer.saes.SAE` whose
config names the site (in interlayer's naming, where the files say), the model (where
they say) and ``origin`` (the format, the file, the hook names as written, the dtype).
A reader of a repository layout (a sparsify run, a Gemma Scope tree, a SAELens release
snapshot) also lists the SAEs under a folder (``entries``), so ``load(folder, site=...)``
can pick one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlayer.errors import InterlayerError

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["Entry", "Reader", "readers", "origin", "find_entries", "load_state", "missing_files"]


@dataclass(frozen=True)
class Entry:
    """One SAE in a repository layout."""

    path: Path
    """The file or folder :meth:`Reader.read` takes."""
    site: str | None
    """Its input site in interlayer's naming, where the layout says (else ``None``)."""
    label: str
    """How the layout names it (``layers.6``, ``layer_12/width_16k/average_l0_82``)."""


@dataclass(frozen=True)
class Reader:
    """One on-disk SAE format."""

    name: str
    """Short name (``sparsify``, ``gemma-scope-2``), as ``origin['format']`` records it."""
    layout: str
    """The files it reads, in words, for the error that lists every format tried."""
    match: Callable[[Path], str | None]
    """``None`` when the path holds one SAE of this format, else why not."""
    read: Callable[[Path], "SAE"]
    """The SAE at a path that matched."""
    entries: Callable[[Path], list[Entry]] | None = None
    """The SAEs under a folder of this format's repository layout (empty: not one)."""
    priority: int = 100
    """Lower is tried first (interlayer's own format: 0)."""


def readers() -> list[Reader]:
    """Every reader of the format modules in this package (each module's ``READERS``), by priority."""
    found: list[Reader] = []
    package = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        found.extend(getattr(module, "READERS", ()))
    return sorted(found, key=lambda r: (r.priority, r.name))


def origin(fmt: str, path: Path, **fields: Any) -> dict[str, Any]:
    """An ``origin`` record for :attr:`~interlayer.saes.SAEConfig.origin`: the format, the
    path read, and ``fields`` (hook names as written, dtype, ...) with ``None`` left out."""
    return {"format": fmt, "path": str(path), **{k: v for k, v in fields.items() if v is not None}}


def find_entries(path: Path, name: str, depth: int, keep: Callable[[Path], bool],
                 site_of: Callable[[Path], str | None]) -> list[Entry]:
    """The SAEs of a repository layout under ``path``: every folder one to ``depth`` levels
    down that holds a file ``name`` and that ``keep(folder)`` accepts, with its site
    (``site_of(folder)``) and its path relative to ``path`` as label, in path order per level."""
    if not path.is_dir():
        return []
    found = []
    for level in range(1, depth + 1):
        for file in sorted(path.glob("/".join(["*"] * level) + f"/{name}")):
            if keep(file.parent):
                found.append(Entry(file.parent, site_of(file.parent), str(file.parent.relative_to(path))))
    return found


def load_state(sae: "SAE", state: dict[str, torch.Tensor | None], source: Path | str) -> "SAE":
    """``sae`` with ``state`` loaded (float32, contiguous; ``None`` entries left out), in eval
    mode; tensors that do not fit are one :class:`~interlayer.saes.formats.SAEFormatError`
    naming ``source``."""
    from . import SAEFormatError

    try:
        sae.load_tensors({k: v.float().contiguous() for k, v in state.items() if v is not None}, str(source))
    except InterlayerError as err:
        message = str(err)
        raise SAEFormatError(message if str(source) in message else f"{source}: {message}") from None
    return sae.eval()


def missing_files(path: Path, names: tuple[str, ...]) -> str | None:
    """Why ``path`` is not a folder holding every file of ``names`` (``"not a folder"``,
    ``"no a or b"``), or ``None`` when it is."""
    if not path.is_dir():
        return "not a folder"
    missing = [name for name in names if not (path / name).is_file()]
    return f"no {' or '.join(missing)}" if missing else None
