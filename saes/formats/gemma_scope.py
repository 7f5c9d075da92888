"""Gemma Scope (Gemma 2's SAEs, ``google/gemma-scope-<size>-<pt|it>-<res|mlp|att|transcoders>``):
``layer_L/width_W/average_l0_N/params.npz`` (``embedding/width_W/average_l0_N`` for the
embedding SAEs of the ``-res`` releases) holding ``W_enc [d, h]``, ``W_dec [h, d]``,
``b_enc``, ``b_dec`` and ``threshold``. A JumpReLU SAE on the raw input:
``pre = x W_enc + b_enc``, ``f = pre * (pre > threshold)``, ``x_hat = f W_dec + b_dec``.

The files name nothing: the layer, width and l0 come from the folders, the site from the
release folder above them (its Hugging Face name, also inside a hub cache's
``models--google--gemma-scope-2b-pt-res``), as SAELens assigns hooks:

=================  ===============================  =====================
release            SAELens hook                     interlayer site
=================  ===============================  =====================
``-res``           ``blocks.L.hook_resid_post``     ``resid_post.L``
``-res`` embedding ``hook_embed``                   ``resid_pre.0``
``-mlp``           ``blocks.L.hook_mlp_out``        ``mlp_out.L``
``-att``           ``blocks.L.attn.hook_z``         none (the heads before ``o_proj``)
``-transcoders``   ``blocks.L.ln2.hook_normalized`` ``mlp_in.L`` -> ``mlp_out.L``
=================  ===============================  =====================

A tree under no release folder reads with no site (pass ``site=`` to :func:`interlayer.saes.load`).

**The embedding SAEs** were trained on Gemma's token embeddings *before* the model's
``sqrt(d_model)`` scale, while ``resid_pre.0`` (the block's input, TransformerLens's
``hook_embed``) is after it. They are read with ``normalization='mean_norm'`` and
``scale = 1/sqrt(d)``: the SAE sees ``x / sqrt(d)``, exactly what it was trained on, and
its reconstruction ``sqrt(d) (f W_dec + b_dec)`` is Gemma Scope's, in ``resid_pre.0``'s
units. SAELens instead folds the scale into the weights (``W_enc / sqrt(d)``,
``W_dec sqrt(d)``) but leaves ``b_dec`` unscaled: its codes are the same, its
reconstruction differs from this one by ``(sqrt(d) - 1) b_dec``.

The helpers below (:func:`build_sae`, :func:`check_width`, :func:`check_shapes`,
:func:`read_safetensors`) are shared with :mod:`.gemma_scope_2` and :mod:`.llama_scope`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from interlayer.errors import InterlayerError

from . import SAEFormatError
from .base import Entry, Reader, find_entries, load_state, origin

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["READERS", "build_sae", "check_width", "check_shapes", "read_safetensors", "release_of"]

PARAMS = "params.npz"
_RELEASE = re.compile(r"gemma-scope-(?P<size>\d+b)-(?P<variant>pt|it)-(?P<kind>res|mlp|att|transcoders)(?:$|[-_/])")
_LAYER = re.compile(r"^layer_(?P<layer>\d+)$")
_WIDTH = re.compile(r"^width_(?P<width>\d+[km]?)$")
_L0 = re.compile(r"^average_l0_(?P<l0>\d+)$")
_KNOWN_WIDTHS = {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072, "262k": 262144,
                 "524k": 524288, "1m": 1048576}
"""Gemma Scope's width labels: powers of two named by their rounded thousands."""
_KEYS = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
_NO_SITE = ("the attention heads' concatenated outputs before o_proj (TransformerLens blocks.{l}.attn.hook_z, "
            "width n_heads * head_dim); interlayer has no site there")


# ------------------------------------------------------------------ shared helpers
def check_width(file: Path, label: str | None, got: int) -> None:
    """Refuse a folder's width label (``16k``, ``1m``, ``32``) that ``got`` latents do not fit.

    Raises:
        SAEFormatError: naming the file, the label (and the width it stands for) and ``got``.
    """
    if label is None:
        return
    number, unit = int(re.sub(r"[km]$", "", label)), label[-1] if label[-1] in "km" else ""
    # 65536 is "65k" and 32768 "32k": the labels truncate (rounding would say 66k, 33k)
    fits = {"": got == number, "k": got // 1000 == number or got == number * 1024,
            "m": got // 10**6 == number or got == number * 1024**2}[unit] or _KNOWN_WIDTHS.get(label) == got
    if not fits:
        meant = _KNOWN_WIDTHS.get(label, number * {"": 1, "k": 1000, "m": 10**6}[unit])
        raise SAEFormatError(f"{file}: the folder says width_{label} ({meant} latents) but the weights have "
                             f"{got} latents; the file does not belong in this folder")


def check_shapes(file: Path, tensors: dict[str, torch.Tensor], want: dict[str, tuple[int, ...]]) -> None:
    """Refuse tensors missing from ``tensors`` or of another shape than ``want`` (both named).

    Raises:
        SAEFormatError: naming the file, the tensors missing, and each shape found against the one expected.
    """
    missing = sorted(set(want) - set(tensors))
    if missing:
        raise SAEFormatError(f"{file} has no {', '.join(missing)} (it holds {', '.join(sorted(tensors)) or 'nothing'})")
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {want[k]})" for k in want if tuple(tensors[k].shape) != want[k]]
    if wrong:
        raise SAEFormatError(f"{file}: tensor shapes do not fit one SAE: {'; '.join(wrong)}")


def read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a damaged or truncated one is a :class:`SAEFormatError` naming it."""
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types for a damaged or truncated file
        raise SAEFormatError(f"{file} cannot be read as safetensors ({err}); the file is damaged or "
                             "truncated") from None


def build_sae(file: Path, state: dict[str, torch.Tensor], threshold: torch.Tensor | None, **fields: Any) -> "SAE":
    """An :class:`~interlayer.saes.SAE` of config ``fields`` holding ``state`` (interlayer's
    tensor names) and, for JumpReLU, ``threshold`` (stored as its log; a negative threshold
    acts as 0, as in SAELens, which applies a ReLU before the threshold's mask).

    Raises:
        SAEFormatError: naming ``file``, for a config interlayer refuses, a threshold that is
            not finite, or tensors that do not fit the config.
    """
    from ..sae import SAE, SAEConfig

    try:
        cfg = SAEConfig(**fields)
    except InterlayerError as err:
        raise SAEFormatError(f"{file}: {err}") from None
    state = dict(state)
    if threshold is not None:
        if not torch.isfinite(threshold).all():
            raise SAEFormatError(f"{file}: the JumpReLU threshold has values that are not finite (NaN or inf)")
        state["activation.log_threshold"] = threshold.float().clamp_min(0).log()
    return load_state(SAE.empty(cfg), state, file)


def release_of(path: Path, pattern: re.Pattern[str]) -> re.Match[str] | None:
    """The release folder ``pattern`` finds in ``path`` or above it (a hub cache's ``models--google--<name>`` too)."""
    for part in reversed(path.absolute().parts):
        found = pattern.search(part.replace("models--google--", ""))
        if found is not None:
            return found
    return None


# ------------------------------------------------------------------ Gemma Scope 1
def _folder(path: Path) -> Path:
    return path.parent if path.name == PARAMS else path


def match(path: Path) -> str | None:
    """``None`` for a folder holding a Gemma Scope ``params.npz`` (or that file), else why not."""
    folder = _folder(path)
    if not (folder / PARAMS).is_file():
        return f"no {PARAMS}"
    return None


def _layout(folder: Path) -> dict[str, Any]:
    """Layer, width, l0 and whether it is an embedding SAE, from ``.../layer_L/width_W/average_l0_N``."""
    parts = folder.absolute().parts[-3:]
    layer = width = l0 = None
    embedding = False
    for part in parts:
        if (m := _LAYER.match(part)) is not None:
            layer = int(m["layer"])
        elif part == "embedding":
            embedding = True
        elif (m := _WIDTH.match(part)) is not None:
            width = m["width"]
        elif (m := _L0.match(part)) is not None:
            l0 = int(m["l0"])
    return {"layer": layer, "width": width, "average_l0": l0, "embedding": embedding}


def sites(kind: str | None, layer: int | None, embedding: bool) -> tuple[str | None, str | None, str | None]:
    """``(site, output_site, hook)`` of a Gemma Scope SAE: the interlayer sites (``None``
    where there is none) and the TransformerLens hook SAELens assigns it."""
    if kind is None or (layer is None and not embedding):
        return None, None, None
    if embedding:
        return ("resid_pre.0", None, "hook_embed") if kind == "res" else (None, None, None)
    return {"res": (f"resid_post.{layer}", None, f"blocks.{layer}.hook_resid_post"),
            "mlp": (f"mlp_out.{layer}", None, f"blocks.{layer}.hook_mlp_out"),
            "att": (None, None, f"blocks.{layer}.attn.hook_z"),
            "transcoders": (f"mlp_in.{layer}", f"mlp_out.{layer}", f"blocks.{layer}.ln2.hook_normalized")}[kind]


def _read_npz(file: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(file, allow_pickle=False) as data:
            raw = {name: np.asarray(data[name]) for name in data.files}
    except Exception as err:  # zipfile, pickle refusal, short reads: all a damaged file
        raise SAEFormatError(f"{file} cannot be read as a NumPy .npz archive ({type(err).__name__}: {err}); the file "
                             "is damaged or truncated") from None
    tensors: dict[str, torch.Tensor] = {}
    for name, value in raw.items():
        key = _KEYS.get(name.lower(), name)
        if key == "scaling_factor" and np.allclose(value, 1.0):
            continue
        if key not in _KEYS.values():
            raise SAEFormatError(f"{file} holds {name!r}, which Gemma Scope's params.npz has not (valid: "
                                 f"{', '.join(_KEYS.values())}); refusing rather than guessing its meaning")
        if not np.issubdtype(value.dtype, np.floating):
            raise SAEFormatError(f"{file}: {name} has dtype {value.dtype}, not a floating-point type")
        tensors[key] = torch.from_numpy(value.astype(np.float32))
    return tensors


def read(path: Path) -> "SAE":
    """The Gemma Scope SAE (or transcoder) in ``path`` (its folder or its ``params.npz``).

    Raises:
        SAEFormatError: a damaged or truncated ``params.npz``, a tensor missing or of the
            wrong shape, or a width other than the folder's (both named).
    """
    folder = _folder(path)
    file = folder / PARAMS
    tensors = _read_npz(file)
    w_enc = tensors.get("W_enc")
    if w_enc is None or w_enc.ndim != 2:
        raise SAEFormatError(f"{file} has no 2-D W_enc [d, h] (it holds {', '.join(sorted(tensors)) or 'nothing'})")
    d, h = w_enc.shape
    layout = _layout(folder)
    check_width(file, layout["width"], h)
    check_shapes(file, tensors, {"W_enc": (d, h), "W_dec": (h, d), "b_enc": (h,), "b_dec": (d,), "threshold": (h,)})
    found = release_of(folder, _RELEASE)
    kind = found["kind"] if found else None
    site, output_site, hook = sites(kind, layout["layer"], layout["embedding"])
    model = f"google/gemma-2-{found['size']}" + ("-it" if found["variant"] == "it" else "") if found else None
    rescale = bool(layout["embedding"] and kind == "res")
    sae = build_sae(file, {k: tensors[k] for k in ("W_enc", "W_dec", "b_enc", "b_dec")}, tensors["threshold"],
                    d_in=d, d_sae=h, arch="jumprelu", normalization="mean_norm" if rescale else "none",
                    scale=1 / math.sqrt(d) if rescale else 1.0, site=site, output_site=output_site,
                    apply_b_dec_to_input=False, model=model)
    note = _NO_SITE.format(l=layout["layer"]) if kind == "att" else None
    sae.cfg.origin = origin("gemma-scope", file, release=found.group(0).rstrip("-_/") if found else None,
                            hook_name=hook, hook_name_out=f"blocks.{layout['layer']}.hook_mlp_out" if output_site else None,
                            layer=layout["layer"], width=layout["width"], average_l0=layout["average_l0"],
                            embedding_rescale="1/sqrt(d_model) (mean_norm)" if rescale else None, no_site=note,
                            dtype="float32")
    return sae


def entries(path: Path) -> list[Entry]:
    """The Gemma Scope SAEs under ``path`` (a release snapshot, or a ``layer_L/`` or ``width_W/`` of one)."""
    def site(folder: Path) -> str | None:
        layout, release = _layout(folder), release_of(folder, _RELEASE)
        return sites(release["kind"] if release else None, layout["layer"], layout["embedding"])[0]

    return find_entries(path, PARAMS, 3, lambda folder: True, site)


READERS = [Reader("gemma-scope", f"{PARAMS} (W_enc, W_dec, b_enc, b_dec, threshold) under "
                  "layer_L/width_W/average_l0_N", match, read, entries, priority=30)]
