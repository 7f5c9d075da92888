"""On-disk SAE formats, told apart by their files' content. One module per format, each
with a ``READERS`` list (:mod:`~interlayer.saes.formats.base`), which
:func:`interlayer.saes.load` tries in turn: interlayer's own (``cfg.json`` +
``sae.safetensors``, :mod:`.own`), SAELens's (``cfg.json`` + ``sae_weights.safetensors``,
:mod:`.saelens_dir`), EleutherAI sparsify (:mod:`.sparsify`), dictionary_learning
(``ae.pt`` + ``config.json``, :mod:`.dictionary_learning`), Gemma Scope (``params.npz``,
:mod:`.gemma_scope`), Gemma Scope 2 (``params.safetensors`` + ``config.json``,
:mod:`.gemma_scope_2`) and Llama Scope (``hyperparams.json`` +
``checkpoints/final.safetensors``, :mod:`.llama_scope`) and circuit-tracer transcoder sets
(``config.yaml`` + ``layer_L.safetensors``, :mod:`.circuit_tracer`). This module holds the file names
and config checks that :mod:`~interlayer.saes.sae` and :mod:`~interlayer.saes.saelens`
share, so neither imports the other to detect a format.

EleutherAI/sparsify saves ``cfg.json`` + ``sae.safetensors`` too, with a config of its
own (``expansion_factor``, ``num_latents``, ``k``, no ``format``): :func:`read_config`
recognises it and points to :func:`interlayer.saes.load` (which reads it,
:mod:`~interlayer.saes.formats.sparsify`), where a bare format check would call it a
damaged interlayer config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from interlayer.errors import InterlayerError

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
FORMAT = 1
"""The format number of an interlayer ``cfg.json``."""
SPARSIFY_KEYS = frozenset({"expansion_factor", "num_latents", "k", "multi_topk", "skip_connection",
                           "normalize_decoder", "transcode"})
"""Fields of an EleutherAI/sparsify ``SparseCoderConfig`` (``cfg.json``)."""


class SAEFormatError(InterlayerError):
    """An SAE directory whose config cannot be read, or is in a format interlayer does not load."""


def is_interlayer_dir(path: str | Path) -> bool:
    """A directory holding an SAE saved by :meth:`interlayer.saes.SAE.save` (or one of
    the same file names, such as sparsify's: :func:`read_config` tells them apart)."""
    path = Path(path)
    return (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def is_saelens_dir(path: str | Path) -> bool:
    """A directory holding an SAE in the SAELens on-disk format."""
    path = Path(path)
    return (path / SAELENS_CONFIG).is_file() and (path / SAELENS_WEIGHTS).is_file()


def read_json_config(file: str | Path) -> dict[str, Any]:
    """A ``cfg.json`` as a dict; unreadable, invalid JSON or not an object is one
    :class:`SAEFormatError` naming the file."""
    file = Path(file)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{file} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise SAEFormatError(f"{file} is not valid JSON ({err}); the SAE config is damaged") from None
    if not isinstance(data, dict):
        raise SAEFormatError(f"{file} holds a JSON {type(data).__name__}, not an SAE config object")
    return data


def looks_like_sparsify(data: dict[str, Any]) -> bool:
    """Whether a ``cfg.json`` without interlayer's ``format`` is sparsify's."""
    return "format" not in data and len(SPARSIFY_KEYS & set(data)) >= 2


def read_config(path: str | Path) -> dict[str, Any]:
    """The checked ``cfg.json`` of an interlayer SAE directory, ``format`` included.

    Raises :class:`SAEFormatError` naming the file for invalid JSON, a config of another
    format (a sparsify SAE is named as such, pointing to ``interlayer.saes.load``), or fields of the wrong type."""
    file = Path(path) / CONFIG
    data = read_json_config(file)
    if data.get("format") != FORMAT:
        if looks_like_sparsify(data):
            raise SAEFormatError(f"{Path(path)} looks like an EleutherAI/sparsify SAE (cfg.json with "
                                 f"{', '.join(sorted(SPARSIFY_KEYS & set(data)))}), not interlayer's own format; load it "
                                 "with interlayer.saes.load(path), which reads sparsify SAEs and transcoders")
        raise SAEFormatError(f"{file} is not an interlayer SAE config of format {FORMAT} "
                             f"(its 'format' is {data.get('format')!r})")
    for key in ("d_in", "d_sae", "k"):
        value = data.get(key)
        if (value is None and key != "k") or (value is not None and (isinstance(value, bool) or not isinstance(value, int))):
            raise SAEFormatError(f"{file}: {key!r} must be a whole number, got {value!r}")
    for key in ("arch", "site", "model", "normalization"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise SAEFormatError(f"{file}: {key!r} must be a string, got {value!r}")
    return data
