"""saprmarks/dictionary_learning's dictionaries (``trainSAE``): a folder ``trainer_<i>/``
with ``ae.pt`` (the dictionary's ``state_dict``, ``torch.save``) and ``config.json``
(``{"trainer": {"dict_class", "activation_dim", "dict_size", "k", "layer", "lm_name",
"submodule_name", ...}, "buffer": {"io", ...}}``); a run folder holds one per trainer.

``ae.pt`` is read with ``torch.load(weights_only=True)`` only: a file carrying pickled
Python objects other than tensors is refused and nothing in it runs. Each ``dict_class``
is read as its module computes (dictionary_learning 0.1.0's source):

- ``AutoEncoder``: ``ReLU(encoder(x - bias))``, ``decoder(f) + bias``; decoder columns
  normalised as its ``from_pretrained`` (and ``utils.load_dictionary``) does (``f`` scaled
  by the column norms, the reconstruction unchanged). ``AutoEncoderNew``: no input
  centring, ``decoder.bias`` the output bias.
- ``GatedAutoEncoder``: the gated architecture (:mod:`~interlayer.saes.archs.gated`).
- ``AutoEncoderTopK``: per-token top-``k`` of ``ReLU`` (its ``encode`` ignores the
  ``threshold`` buffer by default).
- ``BatchTopKSAE`` / ``MatryoshkaBatchTopKSAE``: ``ReLU(pre) * (ReLU(pre) > threshold)``
  at inference (``encode(use_threshold=True)``, the default; all Matryoshka groups active).
- ``JumpReluAutoEncoder``: ``ReLU(pre * (pre > threshold))`` on the raw input (it sets
  ``apply_b_dec_to_input = False``); a threshold at or below 0 acts as 0.

The site comes from ``submodule_name`` (or the folders above): ``resid_post_layer_L``
(``resid_out_layerL``) is resid_post.L, ``resid_pre_layer_L`` resid_pre.L, a block
module path (``model.layers.L``, ``gpt_neox.layers.L``) resid_post.L or resid_pre.L by
the buffer's ``io``. ``attn_out``/``mlp_out`` name the sublayer module's output, which is
interlayer's site only on models without post-sublayer norms: left ``None``, the name kept
in ``origin`` (pass ``site=`` to :func:`interlayer.saes.load`).
"""

from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlayer.errors import InterlayerError, choices

from . import SAEFormatError
from .base import Entry, Reader, find_entries, load_state, origin

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["READERS", "DICT_CLASSES", "site_of"]

WEIGHTS = "ae.pt"
CONFIG = "config.json"
_LINEAR = ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "k")
KEYS = {
    "AutoEncoder": ("bias", "encoder.weight", "encoder.bias", "decoder.weight"),
    "AutoEncoderNew": ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"),
    "GatedAutoEncoder": ("decoder_bias", "encoder.weight", "r_mag", "gate_bias", "mag_bias", "decoder.weight"),
    "AutoEncoderTopK": _LINEAR,
    "BatchTopKSAE": _LINEAR + ("threshold",),
    "MatryoshkaBatchTopKSAE": ("W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"),
    "JumpReluAutoEncoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}
"""The ``state_dict`` keys each dictionary class saves (``threshold`` of AutoEncoderTopK optional)."""
DICT_CLASSES = tuple(KEYS)
"""The ``dict_class`` names read."""
_NAMED = re.compile(r"^(?P<kind>resid_post|resid_out|resid_pre|resid_in|attn_out|mlp_out)_?layer_?(?P<layer>\d+)$")
_BLOCK = re.compile(r"^(?:[A-Za-z_]+\.)*(?:layers|h)\.(?P<layer>\d+)$")


def _files(path: Path) -> tuple[Path, Path] | str:
    """``(ae.pt, config.json)`` of a trainer folder or of a ``.pt`` file (``checkpoints/ae_<step>.pt``
    takes the config above its folder), else why not."""
    if path.is_dir():
        weights, config = path / WEIGHTS, path / CONFIG
    elif path.is_file() and path.suffix == ".pt":
        weights = path
        config = path.parent.parent / CONFIG if path.parent.name == "checkpoints" else path.parent / CONFIG
    else:
        return "not a folder or a .pt file"
    missing = [p.name for p in (weights, config) if not p.is_file()]
    return f"no {' or '.join(missing)}" if missing else (weights, config)


def _config(file: Path) -> dict[str, Any] | str:
    """The ``config.json`` of a dictionary, else why it is not one."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{CONFIG} is not valid JSON"
    trainer = data.get("trainer") if isinstance(data, dict) else None
    if not isinstance(trainer, dict) or not {"dict_class", "activation_dim", "dict_size"} & set(trainer):
        return f"{CONFIG} has no 'trainer' object with dict_class/activation_dim/dict_size"
    return data


def match(path: Path) -> str | None:
    """``None`` for a dictionary_learning trainer folder (``ae.pt`` + ``config.json``) or ``.pt`` file, else why not."""
    found = _files(path)
    if isinstance(found, str):
        return found
    data = _config(found[1])
    return data if isinstance(data, str) else None


def _state(file: Path) -> tuple[dict[str, torch.Tensor], float | None]:
    """The state dict in ``file`` (and a backup's ``norm_factor``), read with ``weights_only=True``."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights only" in str(err).lower():
            raise SAEFormatError(f"{file} carries pickled Python objects other than tensors (a callable or a "
                                 "custom class), refused: it is read only with torch.load(weights_only=True), "
                                 f"which runs no pickled code ({first})") from None
        raise SAEFormatError(f"{file} cannot be read: damaged or truncated ({first})") from None
    except Exception as err:  # truncated or not a torch file: zip, EOF and pickle errors of many types
        first = str(err).splitlines()[0] if str(err) else ""
        raise SAEFormatError(f"{file} cannot be read as a torch.save file: damaged or truncated "
                             f"({type(err).__name__}: {first})") from None
    norm_factor = None
    if isinstance(obj, dict) and isinstance(obj.get("ae"), dict):  # trainSAE's backup: the state before scaling
        norm_factor = obj.get("norm_factor")
        obj = obj["ae"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SAEFormatError(f"{file} is not a state dict of tensors (got {type(obj).__name__}"
                             f"{' with ' + choices(sorted(map(str, obj))[:8]) if isinstance(obj, dict) else ''})")
    if norm_factor is not None and (isinstance(norm_factor, bool) or not isinstance(norm_factor, (int, float))
                                    or not norm_factor > 0):
        raise SAEFormatError(f"{file}: a backup whose norm_factor {norm_factor!r} is not a positive number")
    return obj, norm_factor


def _dict_class(trainer: dict[str, Any], state: dict[str, torch.Tensor], file: Path) -> str:
    name = trainer.get("dict_class")
    if name is None and set(state) == set(KEYS["AutoEncoder"]):
        return "AutoEncoder"  # configs written before dict_class was recorded
    if name not in KEYS:
        raise SAEFormatError(f"{file}: trainer.dict_class {name!r} is not a dictionary_learning class interlayer "
                             f"reads; valid: {choices(DICT_CLASSES)}")
    return name


def _check_keys(state: dict[str, torch.Tensor], name: str, file: Path) -> None:
    want = set(KEYS[name])
    optional = {"threshold"} if name == "AutoEncoderTopK" else set()
    missing, extra = sorted(want - set(state)), sorted(set(state) - want - optional)
    if missing or extra:
        raise SAEFormatError(f"{file} does not hold a {name} state dict: missing {missing}, unexpected {extra} "
                             f"(a {name} saves {choices(KEYS[name])})")


def _whole(trainer: dict[str, Any], key: str, file: Path) -> int | None:
    value = trainer.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise SAEFormatError(f"{file}: trainer.{key} must be a positive whole number, got {value!r}")
    return value


def _oriented(state: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_enc [d, h], W_dec [h, d])`` of a state dict, as float64."""
    if name in ("MatryoshkaBatchTopKSAE", "JumpReluAutoEncoder"):
        return state["W_enc"].double(), state["W_dec"].double()
    return state["encoder.weight"].double().T, state["decoder.weight"].double().T


def _check_widths(w_enc: torch.Tensor, w_dec: torch.Tensor, trainer: dict[str, Any], name: str,
                  files: tuple[Path, Path]) -> tuple[int, int]:
    weights, config = files
    if w_enc.ndim != 2 or w_dec.ndim != 2 or tuple(w_dec.shape) != tuple(w_enc.shape)[::-1]:
        raise SAEFormatError(f"{weights}: the {name} encoder {tuple(w_enc.shape)} and decoder {tuple(w_dec.shape)} "
                             "do not fit each other")
    d, h = w_enc.shape
    for key, got in (("activation_dim", d), ("dict_size", h)):
        said = _whole(trainer, key, config)
        if said is not None and said != got:
            raise SAEFormatError(f"{config} gives trainer.{key}={said} but {weights} holds a {name} with "
                                 f"{key}={got} (encoder {tuple(w_enc.shape)} as [activation_dim, dict_size])")
    return d, h


def _k(state: dict[str, torch.Tensor], trainer: dict[str, Any], files: tuple[Path, Path]) -> int:
    k = int(state["k"].item())
    said = _whole(trainer, "k", files[1])
    if said is not None and said != k:
        raise SAEFormatError(f"{files[1]} gives trainer.k={said} but {files[0]}'s k buffer is {k}")
    return k


def _normalized(w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """AutoEncoder.from_pretrained's ``normalize_decoder`` on ``W_enc [d, h]``, ``b_enc``,
    ``W_dec [h, d]``: unit decoder rows (its columns), the encoder rescaled so the
    reconstruction is unchanged (``f`` times the norms); ``None`` where they are unit already."""
    norms = w_dec.norm(dim=-1)
    if torch.allclose(norms.float(), torch.ones_like(norms).float()):
        return None
    norms = torch.where(norms > 0, norms, torch.ones_like(norms))  # a zero column: left as it is
    return w_enc * norms, b_enc * norms, w_dec / norms[:, None]


def _parts(name: str, state: dict[str, torch.Tensor], k: int | None, weights: Path) -> tuple[dict[str, Any], ...]:
    """``(config fields, interlayer tensors, origin fields)`` of a checked state dict
    (``W_enc`` and ``W_dec`` are the caller's)."""
    s = {key: value.double() for key, value in state.items() if value.is_floating_point()}
    if name == "AutoEncoder":
        return {"arch": "relu"}, {"b_enc": s["encoder.bias"], "b_dec": s["bias"]}, {}
    if name == "AutoEncoderNew":
        tensors = {"b_enc": s["encoder.bias"], "b_dec": s["decoder.bias"]}
        return {"arch": "relu", "apply_b_dec_to_input": False}, tensors, {}
    if name == "GatedAutoEncoder":
        from ..archs.gated import gated_state

        tensors = {"b_enc": s["gate_bias"], "b_dec": s["decoder_bias"], **gated_state(s["r_mag"], s["mag_bias"],
                                                                                      s["gate_bias"])}
        return {"arch": "gated"}, tensors, {}
    if name == "JumpReluAutoEncoder":
        log_threshold = s["threshold"].clamp(min=0).log()  # ReLU(pre * (pre > t)) with t <= 0 is pre * (pre > 0)
        return ({"arch": "jumprelu", "apply_b_dec_to_input": False},
                {"b_enc": s["b_enc"], "b_dec": s["b_dec"], "activation.log_threshold": log_threshold}, {})
    bias = s["encoder.bias"] if "encoder.bias" in s else s["b_enc"]
    threshold = float(state["threshold"]) if "threshold" in state else None
    if name == "AutoEncoderTopK":
        return {"arch": "topk", "k": k}, {"b_enc": bias, "b_dec": s["b_dec"]}, {"threshold": threshold}
    extra = {"threshold": threshold}
    if name == "MatryoshkaBatchTopKSAE":
        extra["group_sizes"] = [int(g) for g in state["group_sizes"].tolist()]
    if threshold < 0:
        warnings.warn(f"{weights}: this {name} has no inference threshold (saved before threshold_start_step); "
                      "dictionary_learning's encode then keeps every positive latent, so it is read as a ReLU SAE",
                      stacklevel=3)
        return {"arch": "relu"}, {"b_enc": bias, "b_dec": s["b_dec"]}, extra
    return ({"arch": "batchtopk", "k": k}, {"b_enc": bias, "b_dec": s["b_dec"], "activation.threshold": s["threshold"]},
            extra)


def site_of(trainer: dict[str, Any], buffer: dict[str, Any], path: Path) -> str | None:
    """The interlayer site of a dictionary where its config (``submodule_name``, ``layer``,
    the buffer's ``io``) or its folders name one unambiguously, else ``None``."""
    io = buffer.get("io", "out") if isinstance(buffer, dict) else "out"
    layer = trainer.get("layer")
    name = trainer.get("submodule_name")
    names = [name] if isinstance(name, str) else [p.name for p in path.parents][:3]  # the folders: no name saved
    for candidate in names:
        found = _NAMED.match(candidate)
        if found is None:
            continue
        at = int(found.group("layer"))
        kind = {"resid_out": "resid_post", "resid_in": "resid_pre"}.get(found.group("kind"), found.group("kind"))
        if kind not in ("resid_post", "resid_pre") or (isinstance(layer, int) and layer != at):
            return None
        return f"{kind}.{at}"
    found = _BLOCK.match(name) if isinstance(name, str) else None
    if found is not None and io in ("in", "out"):
        return f"{'resid_post' if io == 'out' else 'resid_pre'}.{found.group('layer')}"
    return None


def _build(cfg_fields: dict[str, Any], tensors: dict[str, torch.Tensor], d: int, h: int, weights: Path) -> "SAE":
    from ..sae import SAE, SAEConfig
    from ..archs import gated  # noqa: F401  (registers gated)

    try:
        sae = SAE.empty(SAEConfig(d, h, **cfg_fields))
    except InterlayerError as err:
        raise SAEFormatError(f"{weights}: {err}") from None
    return load_state(sae, tensors, weights)


def read(path: Path) -> "SAE":
    """The dictionary_learning dictionary at ``path`` (a trainer folder or a ``.pt`` file) as an interlayer SAE.

    Raises:
        SAEFormatError: a missing file, ``config.json`` not a dictionary config, ``ae.pt``
            damaged, truncated or carrying pickled objects other than tensors, an unknown
            ``dict_class`` (the valid ones listed), a state dict of other keys, or widths or
            ``k`` other than ``config.json`` says (both named).
    """
    files = _files(path)
    if isinstance(files, str):
        raise SAEFormatError(f"{path}: {files}")
    weights, config = files
    data = _config(config)
    if isinstance(data, str):
        raise SAEFormatError(f"{config}: {data}")
    trainer, buffer = data["trainer"], data.get("buffer") or {}
    state, norm_factor = _state(weights)
    name = _dict_class(trainer, state, config)
    _check_keys(state, name, weights)
    w_enc, w_dec = _oriented(state, name)
    d, h = _check_widths(w_enc, w_dec, trainer, name, files)
    k = _k(state, trainer, files) if "k" in KEYS[name] else None
    if name == "MatryoshkaBatchTopKSAE" and int(state["group_sizes"].sum()) != h:
        raise SAEFormatError(f"{weights}: group_sizes {state['group_sizes'].tolist()} do not sum to dict_size={h}")
    cfg_fields, tensors, extra = _parts(name, state, k, weights)
    if name == "AutoEncoder":
        scaled = _normalized(w_enc, tensors["b_enc"], w_dec)
        if scaled is not None:
            w_enc, tensors["b_enc"], w_dec = scaled
            extra["decoder_normalized"] = True
    if norm_factor is not None:  # a backup's biases are in the normalised space: x / norm_factor
        cfg_fields.update(normalization="mean_norm", scale=1.0 / float(norm_factor))
        extra["norm_factor"] = float(norm_factor)
    site = site_of(trainer, buffer, weights)
    model = trainer.get("lm_name") if isinstance(trainer.get("lm_name"), str) else None
    sae = _build({"normalization": "none", **cfg_fields, "site": site, "model": model},
                 {"W_enc": w_enc, "W_dec": w_dec, **tensors}, d, h, weights)
    sae.cfg.origin = origin("dictionary_learning", path, dict_class=name, trainer_class=trainer.get("trainer_class"),
                            submodule_name=trainer.get("submodule_name"), layer=trainer.get("layer"),
                            io=buffer.get("io") if isinstance(buffer, dict) else None,
                            dtype=str(next(iter(state.values())).dtype).removeprefix("torch."),
                            **{key: value for key, value in extra.items() if value is not None})
    return sae


def entries(path: Path) -> list[Entry]:
    """The dictionaries of a ``trainSAE`` save folder (``trainer_<i>/``, up to three folders down)."""
    def config(folder: Path) -> dict[str, Any] | None:
        data = _config(folder / CONFIG) if (folder / CONFIG).is_file() else None
        return data if isinstance(data, dict) else None

    def site(folder: Path) -> str | None:
        data = config(folder)
        return site_of(data["trainer"], data.get("buffer") or {}, folder / WEIGHTS) if data else None

    return find_entries(path, WEIGHTS, 3, lambda folder: config(folder) is not None, site)


READERS = [Reader("dictionary_learning", f"{CONFIG} (with a 'trainer' object: dict_class, activation_dim, "
                  f"dict_size) + {WEIGHTS} (a state_dict)", match, read, entries, priority=30)]
