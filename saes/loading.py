"""One loader for the SAEs and transcoders researchers share: :func:`load` tells the
format by the files' content (never by a file name alone: sparsify and interlayer share
``cfg.json`` + ``sae.safetensors``), converts it to an interlayer :class:`~interlayer.saes.SAE`
and, with ``verify=True``, checks it belongs where it goes (:mod:`interlayer.saes.identity`:
site, width, model) and behaves there (:mod:`interlayer.saes.verify`: reconstruction and
spliced loss on held-out tokens, refused when worse than zero-ablation).

The formats are the modules of :mod:`interlayer.saes.formats` (:func:`sae_formats` lists them).
A folder holding a whole repository layout (a sparsify run with one ``layers.N/`` per
hookpoint, a Gemma Scope tree, a SAELens release snapshot) is narrowed down with
``site=``; :func:`list_saes` lists what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .formats import SAEFormatError
from .formats.base import Entry, Reader, readers
from .identity import canonical_site, check_identity, refuse_siteless

if TYPE_CHECKING:
    from interlayer.model.adapter import ModelAdapter

    from .sae import SAE

__all__ = ["load", "list_saes", "sae_formats", "detect"]


def sae_formats() -> list[str]:
    """The names of the formats :func:`load` reads, in the order it tries them."""
    return [r.name for r in readers()]


def detect(path: str | Path, site: str | None = None) -> tuple[Reader, Path]:
    """The reader of the SAE at ``path`` and the file or folder it reads (inside a
    repository layout, the one SAE of ``site``).

    Raises:
        SAEFormatError: ``path`` does not exist; it is in no known format (every format
            tried is named, with why it did not match); or a layout holds several SAEs and
            ``site`` does not narrow them down to one (the candidates are listed).
    """
    path = Path(path)
    if not path.exists():
        raise SAEFormatError(f"{path} does not exist")
    tried: list[str] = []
    for reader in readers():
        why = reader.match(path)
        if why is None:
            return reader, path
        tried.append(f"{reader.name} ({reader.layout}): {why}")
    for reader in readers():
        found = reader.entries(path) if reader.entries is not None and path.is_dir() else []
        if found:
            return reader, _pick(path, reader, found, site).path
    listing = "\n  - ".join(tried)
    _refuse_damaged_config(path, listing)
    raise SAEFormatError(f"{path} holds no SAE in a format interlayer reads; tried:\n  - {listing}")


CONFIG_FILES = ("cfg.json", "config.json", "hyperparams.json")
"""The JSON configs the formats read (interlayer, SAELens, sparsify; Gemma Scope 2,
dictionary_learning, tuned-lens; Llama Scope)."""


def _refuse_damaged_config(path: Path, listing: str) -> None:
    """A folder whose config is unreadable, not JSON or not an object is damaged, whatever
    its format: name the file and what is wrong with it (then the formats tried)."""
    from .formats import read_json_config

    if not path.is_dir():
        return
    for name in CONFIG_FILES:
        if (path / name).is_file():
            try:
                read_json_config(path / name)
            except SAEFormatError as err:
                raise SAEFormatError(f"{err}; formats tried:\n  - {listing}") from None


def _pick(path: Path, reader: Reader, found: list[Entry], site: str | None) -> Entry:
    if site is not None:
        want = canonical_site(site)
        found = [e for e in found if canonical_site(e.site) == want]
        if not found:
            raise SAEFormatError(f"{path} is a {reader.name} layout with no SAE for {want}; it holds: "
                                 + ", ".join(f"{e.label} ({canonical_site(e.site)})" for e in reader.entries(path)))
    if len(found) > 1:
        raise SAEFormatError(f"{path} is a {reader.name} layout with {len(found)} SAEs"
                             f"{' for ' + site if site else ''}; name one (its folder or file), or pass site=: "
                             + ", ".join(f"{e.label} ({canonical_site(e.site)})" for e in found[:20])
                             + (" ..." if len(found) > 20 else ""))
    return found[0]


def list_saes(path: str | Path) -> list[Entry]:
    """Every SAE under a repository layout at ``path`` (one entry for a single SAE)."""
    path = Path(path)
    for reader in readers():
        if reader.match(path) is None:
            return [Entry(path, None, path.name)]
    for reader in readers():
        found = reader.entries(path) if reader.entries is not None and path.is_dir() else []
        if found:
            return found
    return []


def load(path: str | Path, model: "ModelAdapter | None" = None, site: str | None = None, verify: bool = True, *,
         device: str | None = None, allow_model_mismatch: bool = False, tokens: int | None = None,
         quiet: bool = False) -> "SAE":
    """Load the SAE or transcoder at ``path``, in any format :func:`sae_formats` names.

    Args:
        path: a file or folder of one SAE, or a repository layout narrowed by ``site``.
        model: the model it will be used with; checked against (and, with ``verify``, run).
        site: the site it is for (any naming: ``resid_post.6``, ``blocks.6.hook_resid_post``,
            ``layers.6``); checked against the one its files name.
        verify: check the site, width and model (always, where known) and, with a model,
            its behaviour on held-out tokens (:func:`interlayer.saes.verify.verify_sae`),
            printing a one-line summary; refuse an SAE worse than zero-ablation.
        device: where to put it (default: the model's device, else the CPU).
        allow_model_mismatch: accept files that name another model.
        tokens: held-out tokens for the behavioural check (default: the check's own).
        quiet: no summary line.

    Raises:
        SAEFormatError: no known format (each tried, and why not), or a damaged file (named).
        SAEMismatchError: another site, width or model than asked for.
        SAEVerificationError: reconstruction worse than zero-ablation, or explained variance below 0.
    """
    reader, target = detect(path, site)
    sae = reader.read(target)
    if sae.cfg.origin is None:
        from .formats.base import origin

        sae.cfg.origin = origin(reader.name, target)
    if verify or model is not None:
        check_identity(sae, model, site, allow_model_mismatch=allow_model_mismatch)
    elif site is not None:
        refuse_siteless(sae, site)
        sae.cfg.site = canonical_site(site)
    target_device = device or (model.device if model is not None else None)
    if target_device is not None:
        sae = sae.to(target_device)
    sae.eval()
    if verify and model is not None:
        from .verify import verify_sae

        verify_sae(sae, model, tokens=tokens, quiet=quiet)
    return sae
