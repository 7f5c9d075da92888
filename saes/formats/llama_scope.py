"""Llama Scope (OpenMOSS's Llama-3.1-8B SAEs, ``fnlp/Llama3_1-8B-Base-LX<R|A|M|TC>-<8|32>x``):
one folder per SAE (``Llama3_1-8B-Base-L<layer><R|A|M|TC>-<n>x/``) with ``hyperparams.json``
and ``checkpoints/final.safetensors`` in ``nn.Linear`` layout (``encoder.weight [h, d]``,
``encoder.bias``, ``decoder.weight [d_out, h]``, ``decoder.bias``).

``hyperparams.json`` gives ``d_model``, ``d_sae``, ``act_fn`` (``jumprelu`` with a scalar
``jump_relu_threshold``; ``topk`` with ``top_k``; ``relu``), ``hook_point_in``/``out``
(TransformerLens names, :func:`interlayer.naming.from_transformer_lens`; different ones
make a transcoder) and ``norm_activation: dataset-wise`` with
``dataset_average_activation_norm {in, out}``: inputs were scaled to mean norm
``sqrt(d)``. That is interlayer's ``normalization='mean_norm'`` with
``scale = sqrt(d) / in``; a transcoder whose output norm differs has the ratio
``in / out`` of the two scales folded into its decoder (``W_dec``, ``b_dec`` times
``scale_in / scale_out``), so its output is ``(f W_dec + b_dec) / scale_out``.

The threshold is read as SAELens 6.54 reads it (its ``llama_scope`` loader, the
reference): ``jump_relu_threshold * scale``, compared with ``pre = scale x W_enc + b_enc``.
``apply_decoder_bias_to_pre_encoder: true`` subtracts ``b_dec`` from the scaled input;
``use_decoder_bias: false`` reads a zero ``b_dec``.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlayer.errors import InterlayerError, choices

from . import SAEFormatError, read_json_config
from .base import Entry, Reader, find_entries, origin
from .gemma_scope import build_sae, check_shapes, read_safetensors

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["READERS"]

HYPERPARAMS = "hyperparams.json"
WEIGHTS = "checkpoints/final.safetensors"
ACTIVATIONS = {"jumprelu": "jumprelu", "topk": "topk", "relu": "relu"}
"""Llama Scope's ``act_fn`` values and the interlayer architecture each is read as."""
_NAME = re.compile(r"^Llama3_1-8B-(?P<variant>Base|Instruct)-L(?P<layer>\d+)(?P<sub>[A-Z]+)-(?P<x>\d+)x$", re.I)
_N = 10**6


def _folder(path: Path) -> Path:
    if path.name == HYPERPARAMS:
        return path.parent
    if path.name == "final.safetensors" and path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def _hyperparams(folder: Path) -> dict[str, Any] | str:
    try:
        data = read_json_config(folder / HYPERPARAMS)
    except SAEFormatError as err:
        return str(err)
    if "d_model" not in data or "hook_point_in" not in data:
        return f"{HYPERPARAMS} has no d_model/hook_point_in"
    return data


def match(path: Path) -> str | None:
    """``None`` for a folder holding one Llama Scope SAE, else why not."""
    folder = _folder(path)
    missing = [name for name in (HYPERPARAMS, WEIGHTS) if not (folder / name).is_file()]
    if missing:
        return f"no {' or '.join(missing)}"
    data = _hyperparams(folder)
    return data if isinstance(data, str) else None


def _site(hook: Any) -> str | None:
    from interlayer.naming import from_transformer_lens

    try:
        return from_transformer_lens(str(hook), _N)
    except InterlayerError:
        return None


def sites(hp: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(site, output_site)`` of Llama Scope hyperparams (``output_site=None`` for an SAE)."""
    hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out")
    if hook_out is None or hook_out == hook_in:
        return _site(hook_in), None
    return _site(hook_in), _site(hook_out)


def _whole(file: Path, hp: dict[str, Any], key: str, default: Any = None) -> int:
    value = hp.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SAEFormatError(f"{file}: {key!r} must be a positive whole number, got {value!r}")
    return value


def _scales(file: Path, hp: dict[str, Any], d: int, transcoder: bool) -> tuple[float, float]:
    """``(scale_in, scale_out)``: ``sqrt(d) / dataset_average_activation_norm``."""
    norm = hp.get("norm_activation", "dataset-wise")
    if norm != "dataset-wise":
        raise SAEFormatError(f"{file}: norm_activation {norm!r} is not one interlayer reads (the published Llama "
                             "Scope SAEs are 'dataset-wise'; valid: 'dataset-wise')")
    norms = hp.get("dataset_average_activation_norm")
    if not isinstance(norms, dict) or "in" not in norms:
        raise SAEFormatError(f"{file}: norm_activation 'dataset-wise' needs dataset_average_activation_norm "
                             f"{{'in': ..., 'out': ...}}, got {norms!r}")
    values = {key: norms.get(key, norms["in"]) for key in ("in", "out")}
    bad = {k: v for k, v in values.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0}
    if bad:
        raise SAEFormatError(f"{file}: dataset_average_activation_norm must hold positive numbers, got {bad}")
    return math.sqrt(d) / values["in"], math.sqrt(d) / (values["out"] if transcoder else values["in"])


def _arch(file: Path, hp: dict[str, Any], d_sae: int, scale: float) -> tuple[dict[str, Any], torch.Tensor | None]:
    """The architecture fields and the JumpReLU threshold (``None`` for the others)."""
    act = hp.get("act_fn", "jumprelu")
    if act not in ACTIVATIONS:
        raise SAEFormatError(f"{file}: act_fn {act!r} is not one interlayer reads; valid: {choices(list(ACTIVATIONS))}")
    if act == "topk":
        return {"arch": "topk", "k": _whole(file, hp, "top_k")}, None
    if act == "relu":
        return {"arch": "relu"}, None
    threshold = hp.get("jump_relu_threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise SAEFormatError(f"{file}: act_fn 'jumprelu' needs a number jump_relu_threshold, got {threshold!r}")
    return {"arch": "jumprelu"}, torch.full((d_sae,), float(threshold) * scale)


def _tensors(folder: Path, hp: dict[str, Any], d: int, h: int) -> tuple[dict[str, torch.Tensor], int, str]:
    """The weights in interlayer's names (``W_enc [d, h]``...), the output width and the dtype."""
    file = folder / WEIGHTS
    tensors = read_safetensors(file)
    enc, dec = tensors.get("encoder.weight"), tensors.get("decoder.weight")
    if enc is None or enc.ndim != 2 or dec is None or dec.ndim != 2:
        raise SAEFormatError(f"{file} has no 2-D encoder.weight [h, d] and decoder.weight [d, h] (it holds "
                             f"{', '.join(sorted(tensors)) or 'nothing'})")
    if enc.shape[0] != h:
        raise SAEFormatError(f"{folder / HYPERPARAMS} gives d_sae={h} but {file}'s encoder.weight has "
                             f"{enc.shape[0]} latents (shape {tuple(enc.shape)})")
    if enc.shape[1] != d:
        raise SAEFormatError(f"{folder / HYPERPARAMS} gives d_model={d} but {file}'s encoder.weight reads "
                             f"width {enc.shape[1]} (shape {tuple(enc.shape)})")
    d_out = dec.shape[0]
    use_bias = hp.get("use_decoder_bias", True)
    if not use_bias and "decoder.bias" not in tensors:
        tensors["decoder.bias"] = torch.zeros(d_out)
    want = {"encoder.weight": (h, d), "encoder.bias": (h,), "decoder.weight": (d_out, h), "decoder.bias": (d_out,)}
    check_shapes(file, tensors, want)
    state = {"W_enc": enc.T, "b_enc": tensors["encoder.bias"], "W_dec": dec.T, "b_dec": tensors["decoder.bias"]}
    return {k: v.float() for k, v in state.items()}, d_out, str(enc.dtype).removeprefix("torch.")


def _model(folder: Path) -> tuple[str | None, dict[str, Any]]:
    found = _NAME.match(folder.name)
    if found is None:
        return None, {}
    model = "meta-llama/Llama-3.1-8B" + ("" if found["variant"].lower() == "base" else "-Instruct")
    return model, {"layer": int(found["layer"]), "sublayer": found["sub"], "expansion": int(found["x"])}


def read(path: Path) -> "SAE":
    """The Llama Scope SAE (or transcoder) in ``path`` (its folder, ``hyperparams.json`` or weights).

    Raises:
        SAEFormatError: a damaged or truncated file (named), hyperparams interlayer does
            not read (named, with the valid choices), or weights of another width than the
            hyperparams give (both named).
    """
    folder = _folder(path)
    file = folder / HYPERPARAMS
    hp = _hyperparams(folder)
    if isinstance(hp, str):
        raise SAEFormatError(f"{folder}: {hp}")
    d = _whole(file, hp, "d_model")
    h = _whole(file, hp, "d_sae", d * hp["expansion_factor"] if isinstance(hp.get("expansion_factor"), int) else None)
    site, output_site = sites(hp)
    transcoder = hp.get("hook_point_out", hp["hook_point_in"]) != hp["hook_point_in"]
    scale_in, scale_out = _scales(file, hp, d, transcoder)
    fields, threshold = _arch(file, hp, h, scale_in)
    state, d_out, dtype = _tensors(folder, hp, d, h)
    if scale_out != scale_in:  # the output was normalised by its own scale: fold the ratio into the decoder
        state["W_dec"], state["b_dec"] = state["W_dec"] * (scale_in / scale_out), state["b_dec"] * (scale_in / scale_out)
    b_dec_in = bool(hp.get("apply_decoder_bias_to_pre_encoder", False))
    model, named = _model(folder)
    sae = build_sae(folder / WEIGHTS, state, threshold, d_in=d, d_sae=h, **fields, normalization="mean_norm",
                    scale=scale_in, site=site, output_site=output_site, d_out=d_out if d_out != d else None,
                    apply_b_dec_to_input=b_dec_in, model=model)
    sae.cfg.origin = origin("llama-scope", folder / WEIGHTS, hook_name=hp["hook_point_in"],
                            hook_name_out=hp.get("hook_point_out") if transcoder else None, act_fn=hp.get("act_fn"),
                            jump_relu_threshold=hp.get("jump_relu_threshold") if threshold is not None else None,
                            dataset_average_activation_norm=hp.get("dataset_average_activation_norm"),
                            dtype=dtype, **named)
    return sae


def entries(path: Path) -> list[Entry]:
    """The Llama Scope SAEs under ``path`` (a repository snapshot: one folder per SAE, one or two levels down)."""
    def site(folder: Path) -> str | None:
        hp = _hyperparams(folder)
        return sites(hp)[0] if isinstance(hp, dict) else None

    return find_entries(path, HYPERPARAMS, 2, lambda folder: match(folder) is None, site)


READERS = [Reader("llama-scope", f"{HYPERPARAMS} (d_model, hook_point_in, act_fn) + {WEIGHTS}", match, read,
                  entries, priority=32)]
