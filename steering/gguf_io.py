"""llama.cpp control vectors: GGUF files with ``general.architecture = controlvector``.

Layout (as llama.cpp's ``--control-vector`` loader reads it and repeng's ``export_gguf``
writes it): one float32 tensor ``direction.{N}`` per layer; llama.cpp adds ``direction.N``
to the output of 0-based block ``N``, our ``resid_post.N``, for N = 1..L-1
(``common_control_vector_load_one`` stores it at offset ``(N-1)·n_embd``,
``llama_adapter_cvec::apply`` fills block ``il``'s tensor from offset ``(il-1)·n_embd``, and
``build_cvec(cur, il)`` adds it at the end of block ``il``). Block 0 is never steered, so a
vector with layer 0 is refused before anything is written. ``controlvector.model_hint``
names the architecture and ``controlvector.layer_count`` the number of directions. The
vector's own scale is kept (llama.cpp multiplies it by ``--control-vector-scaled``'s
factor); its provenance is kept under ``interlayer.*`` keys, with
``interlayer.direction_numbering = "block"`` saying that ``direction.N`` is block ``N``.

Files written by interlayer before that key (``interlayer.metadata`` without
``interlayer.direction_numbering``) numbered ``resid_post.l`` as ``direction.(l+1)``, one
block later than llama.cpp applies it; they are read back as written (``direction.N`` is
``resid_post.(N-1)``), with a warning to re-export them.

llama.cpp's format has no checksum. Reading checks what it can: every direction is one
``[n_embd]`` float vector (as llama.cpp's loader requires), finite, and unit-norm when
the interlayer metadata says ``normalized``; a file written by interlayer also carries the
directions' sha256 in that metadata, which is verified.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from interlayer.model.adapter import ModelAdapter
from interlayer.errors import InterlayerError
from interlayer.io.files import WriteError, temporary_file
from interlayer.layers import gguf_direction, layer_from_gguf_direction

from .vector_file import _LAYER_NAME, SteeringFileError, SteeringVector, from_metadata

log = logging.getLogger(__name__)

ARCH = "controlvector"
NUMBERING_KEY = "interlayer.direction_numbering"
"""The key that marks interlayer's files written with llama.cpp's numbering (``direction.N``
is block ``N``); interlayer files without it used ``direction.(l+1)``."""
NUMBERING = "block"


def model_hint(model_type: str) -> str:
    """llama.cpp's architecture name for a Hugging Face ``model_type`` (``gemma3_text`` -> ``gemma3``)."""
    return model_type.removesuffix("_text")


def to_gguf(vector: SteeringVector, path: str | Path, hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (resid_post vectors only), atomically
    (missing parent folders are made): layer ``l`` as ``direction.l``, which llama.cpp adds
    to block ``l``'s output. A vector with layer 0 is refused before anything is written
    (llama.cpp never steers block 0)."""
    import gguf

    path = Path(path)
    if vector.site != "resid_post":
        raise InterlayerError(f"llama.cpp applies control vectors to block outputs (resid_post); this vector is at "
                              f"{vector.site!r}")
    if path.suffix != ".gguf":
        raise InterlayerError(f"{path}: a control vector is written as .gguf")
    try:
        names = {layer: f"direction.{gguf_direction(layer)}" for layer in vector.directions}
    except InterlayerError as err:
        raise type(err)(f"{path} was not written: {err}; drop layer 0 from the vector to export the others") from None
    tmp: Path | None = None
    try:
        descriptor, tmp = temporary_file(path)
        os.close(descriptor)  # the writer opens it by name
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint or vector.extra.get("model_type", "") or vector.model)
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        writer.add_string("interlayer.metadata", json.dumps(vector.metadata()))
        writer.add_string(NUMBERING_KEY, NUMBERING)
        for layer, direction in vector.directions.items():
            writer.add_tensor(names[layer], direction.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {err.strerror or err}") from err
    return path


def _string(reader, key: str, source: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (IndexError, UnicodeDecodeError, TypeError, ValueError) as err:
        raise SteeringFileError(f"{source}: GGUF field {key!r} is not a UTF-8 string ({err})") from None


_FLOAT_TYPES = ("F32", "F16")


def _directions(reader, path: Path, width: int | None = None) -> dict[int, torch.Tensor]:
    """The ``direction.{N}`` tensors by their number ``N``, each checked to be one float
    vector (of ``width`` when the model is known)."""
    directions = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        match = _LAYER_NAME.match(tensor.name)
        if match is None:
            raise SteeringFileError(f"{path}: tensor {tensor.name!r} is not named direction.<layer> "
                                    "(a layer number from 1)")
        number = int(match.group(1))
        if number < 1:
            raise SteeringFileError(f"{path}: {tensor.name} -- llama.cpp numbers layers from 1 (it refuses "
                                    "direction.0: block 0 is never steered)")
        kind = getattr(tensor.tensor_type, "name", str(tensor.tensor_type))
        if kind not in _FLOAT_TYPES:
            raise SteeringFileError(f"{path}: {tensor.name} is of type {kind}; a control vector holds float32 "
                                    f"(or float16) directions")
        data = np.asarray(tensor.data)
        if data.ndim != 1:
            expected = f"[{width}]" if width is not None else "[d_model]"
            raise SteeringFileError(f"{path}: {tensor.name} has shape {list(data.shape)}; llama.cpp control vectors "
                                    f"hold one [n_embd] vector per layer (expected shape {expected})")
        directions[number] = torch.from_numpy(data.astype(np.float32))
    return directions


def _layers(reader, numbered: dict[int, torch.Tensor], path: Path,
            written_by_interlayer: bool) -> dict[int, torch.Tensor]:
    """Block index -> direction: ``direction.N`` is block ``N`` (llama.cpp), except in files
    interlayer wrote before :data:`NUMBERING_KEY`, where it is block ``N - 1``."""
    numbering = _string(reader, NUMBERING_KEY, str(path))
    if numbering is not None and numbering != NUMBERING:
        raise SteeringFileError(f"{path}: {NUMBERING_KEY} is {numbering!r}; this interlayer reads {NUMBERING!r} "
                                "(direction.N is block N's output)")
    if numbering is None and written_by_interlayer:
        layers = {number - 1: v for number, v in numbered.items()}
        log.warning("%s was written by an older interlayer, which numbered resid_post.l as direction.(l+1): read "
                    "as layers %s, but llama.cpp applies its direction.N to block N, one block later; re-export it "
                    "(interlayer steer export) to steer the same layers in llama.cpp", path, sorted(layers))
        return layers
    return {layer_from_gguf_direction(number): v for number, v in numbered.items()}


def from_gguf(path: str | Path, model: ModelAdapter | None = None) -> SteeringVector:
    """Read a llama.cpp control vector. With ``model``: a width that differs is an error,
    a ``model_hint`` naming another architecture a warning, a layer the model lacks an
    error naming its layer count. A malformed file is a :class:`SteeringFileError` naming
    it (see the module docstring for what is checked)."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InterlayerError(f"control vector {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises plain ValueErrors and others for a foreign file
        raise SteeringFileError(f"{path} is not a GGUF file ({err})") from err
    arch = _string(reader, "general.architecture", str(path))
    if arch != ARCH:
        raise SteeringFileError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({ARCH!r})")
    numbered = _directions(reader, path, model.d_model if model is not None else None)
    if not numbered:
        raise SteeringFileError(f"{path} holds no direction.<layer> tensors")
    hint = _string(reader, f"{ARCH}.model_hint", str(path)) or ""
    text = _string(reader, "interlayer.metadata", str(path))
    directions = _layers(reader, numbered, path, written_by_interlayer=text is not None)
    meta = {}
    if text is not None:
        try:
            meta = json.loads(text)
        except ValueError:
            raise SteeringFileError(f"{path}: interlayer.metadata is not valid JSON ({text[:40]!r})") from None
        if not isinstance(meta, dict):
            raise SteeringFileError(f"{path}: interlayer.metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("site", "resid_post") != "resid_post":
        raise SteeringFileError(f"{path}: interlayer.metadata names site {meta['site']!r}; a control vector steers "
                                "block outputs (resid_post)")
    vector = from_metadata(directions, {k: v for k, v in meta.items() if k != "format"}, str(path),
                           defaults={"method": "gguf", "model": hint, "dataset": str(path), "site": "resid_post",
                                     "extra": {"model_hint": hint}})
    vector.extra["model_hint"] = hint
    if model is not None:
        if vector.d_model != model.d_model:
            raise InterlayerError(f"{path} has directions of width {vector.d_model}, but {model.name} has "
                                  f"d_model={model.d_model}: it was made for another model")
        expected = model_hint(model.model_type)
        if hint and hint != expected:
            log.warning("%s names model %r; %s is a %r model", path, hint, model.name, expected)
        try:
            vector.check_model(model)
        except InterlayerError as err:
            raise type(err)(f"{path}: {err}") from None
    return vector


def from_repeng(control: object) -> SteeringVector:
    """A repeng ``ControlVector`` (or its ``directions`` dict ``{layer: array}``) as a
    :class:`SteeringVector`, keys kept: repeng's key ``l`` is added to the output of
    ``model.layers[l]``, interlayer's ``resid_post.l`` and llama.cpp's ``direction.l``
    (repeng trains it on ``hidden_states[l + 1]``; docs/guide/steering.md)."""
    directions = getattr(control, "directions", control)
    if not isinstance(directions, dict):
        raise InterlayerError(f"expected a repeng ControlVector or its directions dict, got {type(control).__name__}")
    hint = str(getattr(control, "model_type", "") or "")
    tensors = {int(layer): torch.as_tensor(np.asarray(v, dtype=np.float32)) for layer, v in directions.items()}
    return SteeringVector(tensors, method="repeng", model=hint, extra={"model_hint": hint} if hint else {})
