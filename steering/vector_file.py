"""A steering vector (:class:`SteeringVector`: one direction per layer at one site kind,
with its provenance) and its file.

A saved vector (:meth:`SteeringVector.save`) is one safetensors file of
``direction.<layer>`` tensors, its provenance as string metadata and a sha256 checksum of
its tensors; :meth:`SteeringVector.load` verifies the checksum, and refuses directions that
are not finite, not one ``[d_model]`` vector each, or not unit-norm while marked
``normalized``. The GGUF export (:mod:`.gguf_io`) carries the same metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open

from interlayer.errors import InterlayerError, LayerIndexError, choices
from interlayer.io.files import write_safetensors_atomic
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import SITE_KINDS, Site

from . import arithmetic

log = logging.getLogger(__name__)

FORMAT = 1
UNIT_TOLERANCE = 1e-4
"""How far from 1 a direction's norm may be in a vector marked ``normalized``."""
_LAYER_NAME = re.compile(r"^direction\.(\d+)$")


class SteeringFileError(InterlayerError):
    """A steering-vector file that is damaged, malformed or not a steering vector."""


def directions_sha256(directions: dict[int, torch.Tensor]) -> str:
    """Hex sha256 of the directions as saved: each layer's name, shape and float32 bytes,
    in layer order (what :meth:`SteeringVector.save` stores and :meth:`~SteeringVector.load`
    checks)."""
    digest = hashlib.sha256()
    for layer in sorted(directions):
        v = directions[layer].detach().float().cpu().contiguous()
        digest.update(f"direction.{layer}:{list(v.shape)}\n".encode())
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SteeringVector:
    """One direction per layer at one site kind, with where it came from.

    ``directions[l]`` is a float32 ``[d_model]`` tensor to add at ``{site}.{l}``. ``site``
    holds a site *kind* (``resid_post``; also readable as :attr:`site_kind`), kept under
    that name because it is the files' metadata key.
    """

    directions: dict[int, torch.Tensor]
    site: str = "resid_post"
    method: str = "mean_diff"
    read: str = "last"
    normalized: bool | None = None
    """Whether every direction is unit-norm. ``None`` (the default) reads it from the
    norms; ``True`` is checked (within :data:`UNIT_TOLERANCE`)."""
    model: str = ""
    weights_sha256: str = ""
    dataset: str = ""
    n_pairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    chat: bool | None = None
    """Whether the pairs were read through the model's chat template (``None``: unknown)."""

    def __post_init__(self) -> None:
        if not isinstance(self.directions, dict) or not self.directions:
            raise InterlayerError("a steering vector needs at least one layer")
        if self.site not in SITE_KINDS:
            raise InterlayerError(f"unknown site kind {self.site!r}; valid kinds: {choices(SITE_KINDS)}")
        for layer, v in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise InterlayerError(f"layer {layer!r} of a steering vector must be an integer >= 0")
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                kind = f"a {v.dtype} tensor" if isinstance(v, torch.Tensor) else type(v).__name__
                raise InterlayerError(f"layer {layer}'s direction must be a float tensor, got {kind}")
        widths = {int(v.shape[-1]) if v.dim() else 0 for v in self.directions.values()}
        if len(widths) != 1 or any(v.dim() != 1 for v in self.directions.values()):
            shapes = sorted({str(list(v.shape)) for v in self.directions.values()})
            raise InterlayerError("every layer's direction must be one [d_model] vector of the same width, "
                                  f"got shape(s) {', '.join(shapes)}")
        self.directions = {int(l): v.detach().float().cpu() for l, v in sorted(self.directions.items())}
        for layer, v in self.directions.items():
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise InterlayerError(f"layer {layer}'s direction holds {bad} NaN or infinite value(s) of {v.numel()}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise InterlayerError(f"chat must be True, False or None (unknown), got {self.chat!r}")
        if not isinstance(self.n_pairs, int) or isinstance(self.n_pairs, bool) or self.n_pairs < 0:
            raise InterlayerError(f"n_pairs must be an integer >= 0, got {self.n_pairs!r}")
        off = {l: float(v.norm()) for l, v in self.directions.items() if abs(float(v.norm()) - 1.0) > UNIT_TOLERANCE}
        if self.normalized is None:
            self.normalized = not off
        elif self.normalized and off:
            layer, norm = next(iter(off.items()))
            raise InterlayerError(f"the vector is marked normalized, but layer {layer}'s direction has norm {norm:.6g} "
                                  "(not 1); normalise it or pass normalized=False")

    @property
    def layers(self) -> list[int]:
        """The layers that have a direction, ascending."""
        return list(self.directions)

    @property
    def d_model(self) -> int:
        """The directions' width (the model's ``d_model``)."""
        return int(next(iter(self.directions.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise InterlayerError(f"this vector has no layer {layer}; its layers: {self.layers}")
        return self.directions[layer]

    @property
    def site_kind(self) -> str:
        """The site kind the directions are added at (what :attr:`site` holds: a kind such
        as ``resid_post``, not a site name)."""
        return self.site

    def site_name(self, layer: int) -> str:
        """The site of ``layer``'s direction, e.g. ``resid_post.6``."""
        return Site(layer, self.site).name

    def check_model(self, model: ModelAdapter) -> None:
        """Refuse a model of another width, or one without these layers or this site."""
        if self.d_model != model.d_model:
            raise InterlayerError(f"the vector has d_model={self.d_model}, but {model.name} has d_model={model.d_model}")
        beyond = [l for l in self.layers if l >= model.n_layers]
        if beyond:
            raise LayerIndexError(f"the vector has layer {beyond[0]}, but {model.name} has {model.n_layers} layers; "
                                  f"valid layers are 0..{model.n_layers - 1}")
        for layer in self.layers:
            model.site(self.site_name(layer))  # names the valid layers and kinds

    def norms(self) -> pd.DataFrame:
        """One row per layer: ``layer`` and the L2 ``norm`` of its direction."""
        return pd.DataFrame({"layer": self.layers, "norm": [float(v.norm()) for v in self.directions.values()]})

    # ------------------------------------------------------------ arithmetic (:mod:`.arithmetic`)
    __array_ufunc__ = None  # NumPy scalars defer to the methods below (np.float32(2) * v)

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        """``a + b``: per layer over the union of both vectors' layers (same model, site kind and width)."""
        return arithmetic.combine(self, other, 1.0)

    def __radd__(self, other: Any) -> "SteeringVector":
        """``0 + v`` is ``v`` (so ``sum(vectors)`` works); anything else as ``+``."""
        return self if isinstance(other, int) and not isinstance(other, bool) and other == 0 else self + other

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        """``a - b``: per layer over the union of the layers; a layer only ``b`` has is negated."""
        return arithmetic.combine(self, other, -1.0)

    def __neg__(self) -> "SteeringVector":
        """``-v``: every direction negated."""
        return arithmetic.scale(self, -1.0)

    def __mul__(self, factor: float) -> "SteeringVector":
        """``v * k``: every direction times the number ``k``."""
        return arithmetic.scale(self, arithmetic.scalar(factor, "*"))

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> "SteeringVector":
        """``v / k``: every direction divided by the non-zero number ``k``."""
        return arithmetic.scale(self, arithmetic.scalar(factor, "/"), "/")

    def __rtruediv__(self, other: Any) -> "SteeringVector":
        """``k / v`` is refused: a steering vector is divided by a number, not into one."""
        raise InterlayerError(f"cannot divide {type(other).__name__} {other!r} by a steering vector; "
                              "divide the vector by a number instead (v / k)")

    # ------------------------------------------------------------ save / load
    def metadata(self) -> dict[str, str]:
        """The provenance as string metadata (safetensors' and the GGUF ``interlayer.metadata``
        schema), with ``sha256``: the checksum of the directions (:func:`directions_sha256`)."""
        return {"format": str(FORMAT), "site": self.site, "method": self.method, "read": self.read,
                "normalized": json.dumps(self.normalized), "model": self.model, "weights_sha256": self.weights_sha256,
                "dataset": self.dataset, "n_pairs": str(self.n_pairs), "layers": json.dumps(self.layers),
                "extra": json.dumps(self.extra), "chat": json.dumps(self.chat),
                "sha256": directions_sha256(self.directions)}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: ``direction.{layer}`` tensors, the provenance and a sha256
        checksum of the tensors as metadata; atomic (missing parent folders are made)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InterlayerError(f"{path}: a steering vector is saved as .safetensors")
        tensors = {f"direction.{l}": v.contiguous() for l, v in self.directions.items()}
        write_safetensors_atomic(path, tensors, metadata=self.metadata())
        return path

    @classmethod
    def load(cls, path: str | Path, model: ModelAdapter | None = None) -> "SteeringVector":
        """Load a vector saved by :meth:`save`; with ``model``, refuse one that does not fit it.

        A damaged or malformed file is a :class:`SteeringFileError` naming it: a checksum
        that does not match the tensors, directions that are not finite or not one
        ``[d_model]`` vector each, a vector marked ``normalized`` whose norms are not 1,
        tensors not named ``direction.<layer>``, or metadata that does not parse. Files
        saved before checksums were stored load with a logged note."""
        path = Path(path)
        if not path.is_file():
            raise InterlayerError(f"steering vector {str(path)!r} does not exist")
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for a file that is not one
            raise SteeringFileError(f"{path} is not a safetensors steering vector ({err})") from err
        if meta.get("format") != str(FORMAT) or not tensors or any(not k.startswith("direction.") for k in tensors):
            raise SteeringFileError(f"{path} is not an interlayer steering vector (format {FORMAT}, "
                                    "direction.<layer> tensors)")
        if "site" not in meta:
            raise SteeringFileError(f"{path}: the metadata names no 'site' (e.g. 'resid_post'); "
                                    "it is not a complete steering vector")
        directions = {}
        for name, tensor in tensors.items():
            match = _LAYER_NAME.match(name)
            if match is None:
                raise SteeringFileError(f"{path}: tensor {name!r} is not named direction.<layer> (a layer number)")
            directions[int(match.group(1))] = tensor
        vector = from_metadata(directions, meta, str(path))
        if model is not None:
            try:
                vector.check_model(model)
            except InterlayerError as err:
                raise type(err)(f"{path}: {err}") from None
        return vector


def _meta_string(meta: dict[str, Any], key: str, source: str, default: str) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise SteeringFileError(f"{source}: metadata field {key!r} must be a string, got {type(value).__name__} "
                                f"{value!r}")
    return value


def _meta_json(meta: dict[str, Any], key: str, source: str, default: Any, types: tuple[type, ...], what: str) -> Any:
    if key not in meta:
        return default
    text = _meta_string(meta, key, source, "")
    try:
        value = json.loads(text)
    except ValueError:
        raise SteeringFileError(f"{source}: metadata field {key!r} is not valid JSON ({text[:40]!r}); "
                                f"expected {what}") from None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise SteeringFileError(f"{source}: metadata field {key!r} is {text[:40]!r}; expected {what}")
    return value


def from_metadata(directions: dict[int, torch.Tensor], meta: dict[str, Any], source: str,
                  defaults: dict[str, Any] | None = None) -> SteeringVector:
    """A :class:`SteeringVector` from a file's ``directions`` and string ``meta`` (the
    :meth:`SteeringVector.metadata` schema), checked: ``sha256`` (when present) against the
    directions, every field's type, the directions themselves. Any problem is one
    :class:`SteeringFileError` naming ``source``. ``defaults`` fill fields the metadata lacks."""
    defaults = defaults or {}
    for layer, tensor in directions.items():
        if tensor.dim() != 1:
            raise SteeringFileError(f"{source}: direction.{layer} has shape {list(tensor.shape)}; "
                                    "expected one [d_model] vector per layer")
    expected = _meta_string(meta, "sha256", source, "")
    if expected:
        got = directions_sha256(directions)
        if got != expected:
            raise SteeringFileError(f"{source} is damaged: its tensors' sha256 is {got[:12]}..., but the file "
                                    f"records {expected[:12]}...; retrain or re-export the vector")
    else:
        log.info("%s carries no checksum (written before interlayer stored one, or by another tool); "
                 "its values and norms are checked", source)
    n_pairs = _meta_string(meta, "n_pairs", source, str(defaults.get("n_pairs", 0)))
    if not (n_pairs.isascii() and n_pairs.isdigit()):
        raise SteeringFileError(f"{source}: metadata field 'n_pairs' is {n_pairs[:40]!r}; expected a whole number >= 0")
    layers = _meta_json(meta, "layers", source, None, (list,), "a JSON list of layer numbers")
    if layers is not None and (not all(isinstance(l, int) and not isinstance(l, bool) for l in layers)
                               or sorted(layers) != sorted(directions)):
        raise SteeringFileError(f"{source}: the metadata lists layers {layers}, but the file holds directions for "
                                f"{sorted(directions)}")
    extra = _meta_json(meta, "extra", source, {}, (dict,), "a JSON object")
    chat = _meta_json(meta, "chat", source, extra.get("chat"), (bool, type(None)), "true, false or null")
    extra = {k: v for k, v in extra.items() if k != "chat"}
    normalized = _meta_json(meta, "normalized", source, None, (bool,), "true or false")
    for layer, tensor in directions.items():
        norm = float(tensor.float().norm())
        if normalized and math.isfinite(norm) and abs(norm - 1.0) > UNIT_TOLERANCE:
            raise SteeringFileError(f"{source} is marked normalized, but its direction at layer {layer} has norm "
                                    f"{norm:.6g}, not 1: the file is damaged (or its flag is wrong; load the tensors "
                                    "and save them with normalized=False)")
    try:
        return SteeringVector(
            directions, site=_meta_string(meta, "site", source, defaults.get("site", "resid_post")),
            method=_meta_string(meta, "method", source, defaults.get("method", "unknown")),
            read=_meta_string(meta, "read", source, defaults.get("read", "last")),
            normalized=normalized,
            model=_meta_string(meta, "model", source, defaults.get("model", "")),
            weights_sha256=_meta_string(meta, "weights_sha256", source, ""),
            dataset=_meta_string(meta, "dataset", source, defaults.get("dataset", "")),
            n_pairs=int(n_pairs), extra={**defaults.get("extra", {}), **extra}, chat=chat)
    except SteeringFileError:
        raise
    except InterlayerError as err:
        raise SteeringFileError(f"{source}: {err}") from None


__all__ = ["FORMAT", "UNIT_TOLERANCE", "SteeringFileError", "SteeringVector", "directions_sha256", "from_metadata"]
