"""llama.cpp control vectors: GGUF files with ``general.architecture = controlvector``.

Layout (as llama.cpp's ``--control-vector`` loader and repeng's ``export_gguf`` write it):
one float32 tensor ``direction.{n}`` per layer, with llama.cpp's 1-based numbering
(``direction.{l+1}`` is added to the output of block ``l``, our ``resid_post.l``);
``controlvector.model_hint`` names the architecture and ``controlvector.layer_count``
the number of directions. The vector's own scale is kept (llama.cpp multiplies it by
``--control-vector-scaled``'s factor); its provenance is kept under ``interlayer.*`` keys.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from interlayer.adapter import ModelAdapter
from interlayer.errors import InterlayerError
from interlayer.files import WriteError

from .vectors import SteeringVector

log = logging.getLogger(__name__)

ARCH = "controlvector"


def model_hint(model_type: str) -> str:
    """llama.cpp's architecture name for a Hugging Face ``model_type`` (``gemma3_text`` -> ``gemma3``)."""
    return model_type.removesuffix("_text")


def to_gguf(vector: SteeringVector, path: str | Path, hint: str | None = None) -> Path:
    """Write ``vector`` as a llama.cpp control vector (resid_post vectors only), atomically."""
    import gguf

    path = Path(path)
    if vector.site != "resid_post":
        raise InterlayerError(f"llama.cpp applies control vectors to block outputs (resid_post); this vector is at "
                              f"{vector.site!r}")
    if path.suffix != ".gguf":
        raise InterlayerError(f"{path}: a control vector is written as .gguf")
    tmp = path.with_name(path.name + ".part")
    try:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        writer.add_string(f"{ARCH}.model_hint", hint or vector.extra.get("model_type", "") or vector.model)
        writer.add_uint32(f"{ARCH}.layer_count", len(vector.layers))
        writer.add_string("interlayer.metadata", json.dumps(vector.metadata()))
        for layer, direction in vector.directions.items():
            writer.add_tensor(f"direction.{layer + 1}", direction.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {err.strerror or err}") from err
    return path


def _string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def from_gguf(path: str | Path, model: ModelAdapter | None = None) -> SteeringVector:
    """Read a llama.cpp control vector. With ``model``: a width that differs is an error,
    a ``model_hint`` naming another architecture a warning."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise InterlayerError(f"control vector {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises plain ValueErrors and others for a foreign file
        raise InterlayerError(f"{path} is not a GGUF file ({err})") from err
    arch = _string(reader, "general.architecture")
    if arch != ARCH:
        raise InterlayerError(f"{path} is a GGUF of architecture {arch!r}, not a control vector ({ARCH!r})")
    directions = {}
    for tensor in reader.tensors:
        if not tensor.name.startswith("direction."):
            continue
        number = int(tensor.name.split(".")[1])
        if number < 1:
            raise InterlayerError(f"{path}: {tensor.name} -- llama.cpp numbers layers from 1")
        directions[number - 1] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    if not directions:
        raise InterlayerError(f"{path} holds no direction.<layer> tensors")
    hint = _string(reader, f"{ARCH}.model_hint") or ""
    meta = json.loads(_string(reader, "interlayer.metadata") or "{}")
    vector = SteeringVector(directions, site="resid_post", method=meta.get("method", "gguf"),
                            read=meta.get("read", "last"), normalized=json.loads(meta.get("normalized", "false")),
                            model=meta.get("model", hint), weights_sha256=meta.get("weights_sha256", ""),
                            dataset=meta.get("dataset", str(path)), n_pairs=int(meta.get("n_pairs", 0)),
                            extra={"model_hint": hint})
    if model is not None:
        if vector.d_model != model.d_model:
            raise InterlayerError(f"{path} has directions of width {vector.d_model}, but {model.name} has "
                                  f"d_model={model.d_model}: it was made for another model")
        expected = model_hint(model.model_type)
        if hint and hint != expected:
            log.warning("%s names model %r; %s is a %r model", path, hint, model.name, expected)
        vector.check_model(model)
    return vector
