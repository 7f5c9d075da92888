"""tuned-lens checkpoints (AlignmentResearch/tuned-lens, Belrose et al. 2023), read and written.

A tuned-lens checkpoint is a directory of ``config.json`` (``TunedLensConfig``:
``base_model_name_or_path``, ``d_model``, ``num_hidden_layers``, ``bias``, ``unembed_hash``,
``lens_type``, ...) and ``params.pt``, the ``state_dict`` of its ``layer_translators``
(``"{i}.weight"`` ``[d, d]`` and ``"{i}.bias"`` ``[d]`` for i = 0..L-1). Its
``TunedLens.forward(h, i)`` is ``unembed(h + A_i h + b_i)``, ``unembed`` being the final norm
then the unembedding, and translator ``i`` reads ``hidden_states[i]``:

=================  =======================  ==========================
tuned-lens index   Hugging Face             interlayer
=================  =======================  ==========================
0                  ``hidden_states[0]``     ``resid_pre.0``, ``layer=None`` (the embeddings)
i = 1..L-1         ``hidden_states[i]``     ``resid_post.(i-1)``, ``layer=i-1``
(none)             ``hidden_states[L]``     ``resid_post.(L-1)``: the model's own output
=================  =======================  ==========================

(:func:`interlayer.naming.to_tuned_lens` converts one site.) interlayer decodes through the
same final norm and unembedding, plus the final-logit soft-cap of the families that have one
(Gemma 2), which tuned-lens leaves out; tuned-lens's own code supports no such family.

``params.pt`` is read only with ``torch.load(weights_only=True)``: a file holding anything
but tensors (a pickled callable) is refused, never run.

This module is the format only (:func:`read_tuned_lens`, :func:`write_tuned_lens`, translators
keyed by interlayer layer); the lens is built and written by
:meth:`interlayer.lens.TunedLens.from_tuned_lens` and :meth:`~interlayer.lens.TunedLens.to_tuned_lens`,
and every ``--tuned-lens DIR`` accepts such a directory (:func:`interlayer.lens.load_lens`).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch

from interlayer.errors import InterlayerError
from interlayer.io.files import write_atomic, write_json_atomic
from interlayer.model.adapter import ModelAdapter

from interlayer.layers import layer_from_hidden_index

__all__ = ["TUNED_LENS_FILES", "TunedLensCheckpoint", "Translators", "is_tuned_lens_dir", "read_tuned_lens",
           "unembed_hash", "write_tuned_lens"]

log = logging.getLogger(__name__)

TUNED_LENS_FILES = ("config.json", "params.pt")
"""The files of a tuned-lens checkpoint (``tuned_lens.TunedLens.save``)."""

Translators = dict[int | None, tuple[torch.Tensor, torch.Tensor]]
"""Translators by interlayer layer: ``None`` the embedding output, ``l`` block ``l``
(``resid_post.l``); each a ``(weight [d, d], bias [d])`` pair of ``h -> h + W h + b``."""

_REQUIRED = ("d_model", "num_hidden_layers")
_LENS_TYPE = "linear_tuned_lens"


def is_tuned_lens_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a tuned-lens checkpoint, judged by content: a ``params.pt`` beside a
    ``config.json`` that is a JSON object with ``d_model`` and ``num_hidden_layers`` (and not an
    interlayer lens's ``kind``). Cheap: reads the config only."""
    path = Path(path)
    if not all((path / name).is_file() for name in TUNED_LENS_FILES):
        return False
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "kind" not in config and all(key in config for key in _REQUIRED)


def unembed_hash(model: ModelAdapter) -> str:
    """tuned-lens's hash of ``model``'s unembedding (``Unembed.unembedding_hash``): sha256 of
    NumPy's summarised print of the float32 matrix at one decimal; it identifies the model
    loosely (robust to dtype), and depends on NumPy's print format."""
    import numpy as np

    weight = model.unembed.weight.detach().cpu().float().numpy()
    return hashlib.sha256(np.array_str(weight, precision=1).encode()).hexdigest()


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / "config.json"
    if not config_path.is_file() or not (directory / "params.pt").is_file():
        raise InterlayerError(f"{directory} is not a tuned-lens checkpoint (needs config.json and params.pt)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InterlayerError(f"{config_path} is not readable JSON ({type(err).__name__}: {err})") from err
    if not isinstance(config, dict) or not all(isinstance(config.get(key), int) for key in _REQUIRED):
        raise InterlayerError(f"{config_path} is not a tuned-lens config: it needs whole numbers "
                              f"{' and '.join(_REQUIRED)}")
    if config.get("lens_type", _LENS_TYPE) != _LENS_TYPE:
        raise InterlayerError(f"{config_path} has lens_type={config['lens_type']!r}; only {_LENS_TYPE!r} is read")
    if config["num_hidden_layers"] < 1 or config["d_model"] < 1:
        raise InterlayerError(f"{config_path} has d_model={config['d_model']}, "
                              f"num_hidden_layers={config['num_hidden_layers']}; both must be at least 1")
    return config


def _check_shape(where: str, d_model: int, n_layers: int, model: ModelAdapter) -> None:
    if d_model != model.d_model:
        raise InterlayerError(f"{where} is a lens for d_model={d_model}, but {model.name} has "
                              f"d_model={model.d_model}")
    if n_layers != model.n_layers:
        raise InterlayerError(f"{where} is a lens for {n_layers} layers (num_hidden_layers), but {model.name} "
                              f"has {model.n_layers}")


def _load_params(path: Path) -> dict[str, torch.Tensor]:
    """``params.pt`` through ``torch.load(weights_only=True)``, on the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise InterlayerError(f"{path} holds objects other than tensors, refused: it is read only with "
                              f"torch.load(weights_only=True), which never runs pickled code "
                              f"({str(err).splitlines()[0]})") from err
    except Exception as err:  # truncated or not a torch file: zip, EOF and pickle errors of many types
        raise InterlayerError(f"{path} is not a readable params.pt (truncated or not a torch.save file; "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InterlayerError(f"{path} is not a state dict of tensors (got {type(state).__name__})")
    return state


def _check_params(path: Path, state: dict[str, torch.Tensor], d_model: int, n_layers: int, bias: bool) -> None:
    expected = {f"{i}.weight" for i in range(n_layers)} | ({f"{i}.bias" for i in range(n_layers)} if bias else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise InterlayerError(f"{path} does not hold the {n_layers} translators its config.json names "
                              f"(keys 0..{n_layers - 1}.weight/.bias); missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}")
    for key, value in state.items():
        shape = (d_model, d_model) if key.endswith(".weight") else (d_model,)
        if tuple(value.shape) != shape or not value.is_floating_point():
            raise InterlayerError(f"{path}: {key} has shape {tuple(value.shape)} ({value.dtype}); "
                                  f"expected float {shape} for d_model={d_model}")


class TunedLensCheckpoint(NamedTuple):
    """A tuned-lens checkpoint as read by :func:`read_tuned_lens`."""

    directory: Path
    """Where it was read from."""
    config: dict[str, Any]
    """Its ``config.json`` as written."""
    d_model: int
    """The residual width (``d_model``)."""
    n_layers: int
    """The model's decoder blocks (``num_hidden_layers``)."""
    translators: Translators
    """All ``n_layers`` translators, float32, by interlayer layer (translator ``i`` at ``i - 1``, 0 at ``None``)."""


def read_tuned_lens(path: str | Path, model: ModelAdapter | None = None) -> TunedLensCheckpoint:
    """Read the tuned-lens checkpoint in directory ``path`` (``params.pt`` only through
    ``torch.load(weights_only=True)``), its translator ``i`` keyed by the layer of
    ``hidden_states[i]``: ``None`` (the embeddings) for 0, ``i - 1`` for ``resid_post.(i-1)``.
    :meth:`interlayer.lens.TunedLens.from_tuned_lens` builds a lens of it. With ``model``, its
    width and layer count are checked before ``params.pt`` is read, and a different
    ``unembed_hash`` is logged as a warning (as tuned-lens does; the hash is loose).

    Raises:
        InterlayerError: no ``config.json``/``params.pt``, an unreadable or truncated file (named),
            a ``params.pt`` holding anything but tensors (``weights_only``), translators missing or
            of the wrong shape, or a lens for another ``d_model`` or layer count than ``model``.
    """
    directory = Path(path)
    config = _read_config(directory)
    d_model, n_layers, bias = config["d_model"], config["num_hidden_layers"], bool(config.get("bias", True))
    if model is not None:
        _check_shape(f"the tuned-lens checkpoint {directory}", d_model, n_layers, model)
    params = directory / "params.pt"
    state = _load_params(params)
    _check_params(params, state, d_model, n_layers, bias)
    translators: Translators = {
        layer_from_hidden_index(i, n_layers): (state[f"{i}.weight"].float(),
                                               state[f"{i}.bias"].float() if bias else torch.zeros(d_model))
        for i in range(n_layers)}
    expected = config.get("unembed_hash")
    if model is not None and expected and expected != unembed_hash(model):
        log.warning("%s: the unembedding hash does not match %s's; the lens may have been trained on another model",
                    directory, model.name)
    return TunedLensCheckpoint(directory, config, d_model, n_layers, translators)


def write_tuned_lens(path: str | Path, translators: Translators, d_model: int, n_layers: int,
                     model: ModelAdapter | None = None, base_model_name_or_path: str = "") -> Path:
    """Write a tuned-lens checkpoint (``config.json`` + ``params.pt``, atomically) in directory
    ``path``, which ``tuned_lens.TunedLens.from_model_and_pretrained(hf_model, path)`` reads:
    translator ``i`` is ``translators[layer]`` for the layer of ``hidden_states[i]`` (0: ``None``,
    the embedding output; ``i``: block ``i - 1``), the identity (zeros) where there is none.
    With ``model`` the shape is checked against it and ``unembed_hash`` recorded (tuned-lens then
    checks it). :meth:`interlayer.lens.TunedLens.to_tuned_lens` calls this. Returns ``path``.

    Raises:
        InterlayerError: the shape does not fit ``model``, a translator of a layer tuned-lens has no
            slot for, or ``path`` holding a ``config.json`` that is not a tuned-lens config (e.g. a
            model checkpoint's), which is never overwritten.
    """
    directory = Path(path)
    if model is not None:
        _check_shape("the lens", d_model, n_layers, model)
    slots = [layer_from_hidden_index(i, n_layers) for i in range(n_layers)]
    extra = sorted(str(layer) for layer in set(translators) - set(slots))
    if extra:
        raise InterlayerError(f"translators for layers {extra} have no tuned-lens slot; a {n_layers}-layer "
                              f"tuned lens holds the embeddings (None) and blocks 0..{n_layers - 2}")
    if (directory / "config.json").exists() and not is_tuned_lens_dir(directory):
        raise InterlayerError(f"{directory / 'config.json'} exists and is not a tuned-lens config; "
                              "give an empty directory or a tuned-lens checkpoint's to overwrite")
    state: dict[str, torch.Tensor] = {}
    for i, layer in enumerate(slots):
        weight, bias = translators.get(layer, (torch.zeros(d_model, d_model), torch.zeros(d_model)))
        state[f"{i}.weight"] = weight.detach().cpu().float().clone().contiguous()
        state[f"{i}.bias"] = bias.detach().cpu().float().clone().contiguous()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(directory / "params.pt", buffer.getvalue())
    write_json_atomic(directory / "config.json", {
        "base_model_name_or_path": base_model_name_or_path or (model.name if model is not None else ""),
        "d_model": d_model, "num_hidden_layers": n_layers, "bias": True, "base_model_revision": None,
        "unembed_hash": unembed_hash(model) if model is not None else None, "lens_type": _LENS_TYPE,
    })
    return directory
