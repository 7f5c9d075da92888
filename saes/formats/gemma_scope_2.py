"""Gemma Scope 2 (Gemma 3's SAEs and transcoders, ``google/gemma-scope-2-<size>-<pt|it>``):
``<site>/layer_L_width_W_l0_<small|medium|big>[_seed_N][_affine]/`` with ``params.safetensors``
(``w_enc [d, h]``, ``w_dec [h, d_out]``, ``b_enc``, ``b_dec``, ``threshold``, and for the
``_affine`` transcoders ``affine_skip_connection [d, d_out]``) and ``config.json``
(``hf_hook_point_in``/``out`` in Hugging Face module naming, ``model_name``,
``affine_connection``). The ``<site>`` folders are ``resid_post``, ``mlp_out``,
``attn_out``, ``transcoder`` and their ``*_all`` (every layer) twins.

A JumpReLU SAE on the raw input: ``pre = x w_enc + b_enc``, ``f = pre * (pre > threshold)``,
``x_hat = f w_dec + b_dec`` (``+ x affine_skip_connection`` for an affine transcoder,
which SAELens stores transposed as ``W_skip``). The hook points map with
:func:`interlayer.naming.from_gemma_scope`: ``model.layers.L.output`` is resid_post.L,
``...post_feedforward_layernorm.output`` mlp_out.L; a transcoder reads
``...pre_feedforward_layernorm.output`` (mlp_in.L) and writes mlp_out.L. The attn_out SAEs
read ``self_attn.o_proj.input`` (the heads before the output projection): no interlayer
site, so they load with ``site=None`` (the reason is in ``origin['no_site']``). Without a
``config.json`` the hook points are inferred from the folder names, as SAELens does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from interlayer.errors import InterlayerError

from . import SAEFormatError, read_json_config
from .base import Entry, Reader, find_entries, origin
from .gemma_scope import build_sae, check_shapes, check_width, read_safetensors, release_of

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["READERS", "hook_points"]

PARAMS = "params.safetensors"
CONFIG = "config.json"
SITE_FOLDERS = ("resid_post", "mlp_out", "attn_out", "transcoder")
"""The ``<site>`` folders of a Gemma Scope 2 repository (each also as ``<site>_all``)."""
_FOLDER = re.compile(r"^layer_(?P<layer>\d+)_width_(?P<width>\d+[km]?)_l0_(?P<l0>[a-z0-9]+?)"
                     r"(?:_seed_(?P<seed>\d+))?(?P<affine>_affine)?$")
_RELEASE = re.compile(r"gemma-scope-2-(?P<size>\d+(?:m|b))-(?P<variant>pt|it)(?:$|[-_/])")
_N = 10**6


def _folder(path: Path) -> Path:
    return path.parent if path.name in (PARAMS, CONFIG) else path


def match(path: Path) -> str | None:
    """``None`` for a folder holding one Gemma Scope 2 SAE (``params.safetensors`` with a
    ``config.json`` or under a ``layer_L_width_W_l0_*`` folder name), else why not."""
    folder = _folder(path)
    if not (folder / PARAMS).is_file():
        return f"no {PARAMS}" + ("" if (folder / CONFIG).is_file() else f" or {CONFIG}")
    if not (folder / CONFIG).is_file() and _FOLDER.match(folder.name) is None:
        return f"no {CONFIG}, and the folder is not named layer_L_width_W_l0_*"
    return None


def hook_points(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` (or, without one, what SAELens infers from the folder
    names): ``hf_hook_point_in``, ``hf_hook_point_out`` (transcoders), ``affine_connection``.

    Raises:
        SAEFormatError: a ``config.json`` that is not a JSON object, or no config and
            folder names that do not say the site and layer.
    """
    if (folder / CONFIG).is_file():
        return read_json_config(folder / CONFIG)
    found = _FOLDER.match(folder.name)
    kind = folder.parent.name.removesuffix("_all")
    if found is None or kind not in SITE_FOLDERS:
        raise SAEFormatError(f"{folder} has no {CONFIG}, and its folders do not name the site and layer "
                             f"(<site>/layer_L_width_W_l0_<size>, <site> one of {', '.join(SITE_FOLDERS)})")
    layer = found["layer"]
    hook_in = {"resid_post": f"model.layers.{layer}.output",
               "mlp_out": f"model.layers.{layer}.post_feedforward_layernorm.output",
               "attn_out": f"model.layers.{layer}.self_attn.o_proj.input",
               "transcoder": f"model.layers.{layer}.pre_feedforward_layernorm.output"}[kind]
    cfg: dict[str, Any] = {"architecture": "jump_relu", "hf_hook_point_in": hook_in}
    if kind == "transcoder":
        cfg["hf_hook_point_out"] = f"model.layers.{layer}.post_feedforward_layernorm.output"
        cfg["affine_connection"] = bool(found["affine"])
    return cfg


def _site(hook: str | None) -> tuple[str | None, str | None]:
    """The interlayer site of a hook point, or ``(None, why not)``."""
    from interlayer.naming import from_gemma_scope

    if hook is None:
        return None, None
    try:
        return from_gemma_scope(hook, _N), None
    except InterlayerError as err:
        return None, str(err)


def sites(cfg: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """``(site, output_site, why there is no site)`` of a config: a transcoder (its hook
    points differ) reads one site and predicts another; an SAE has ``output_site=None``."""
    hook_in, hook_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
    site, why = _site(hook_in)
    if hook_out is None or hook_out == hook_in:
        return site, None, why
    output_site, why_out = _site(hook_out)
    return site, output_site, why or why_out


def _model(cfg: dict[str, Any], folder: Path) -> str | None:
    """The model name as SAELens normalises it (``google/`` prefixed, ``-v3`` as ``-3``, 270m without ``-pt``)."""
    name = cfg.get("model_name")
    if not isinstance(name, str):
        found = release_of(folder, _RELEASE)
        if found is None:
            return None
        name = f"gemma-3-{found['size']}-{found['variant']}"
    name = name if "google" in name else "google/" + name
    name = name.replace("-v3", "-3")
    return name.replace("-pt", "") if "270m" in name else name


def _check_config(file: Path, cfg: dict[str, Any]) -> None:
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise SAEFormatError(f"{file}: architecture {cfg.get('architecture')!r} is not Gemma Scope 2's; valid: "
                             "'jump_relu'")
    for key in ("hf_hook_point_in", "hf_hook_point_out"):
        if cfg.get(key) is not None and not isinstance(cfg[key], str):
            raise SAEFormatError(f"{file}: {key!r} must be a string, got {cfg[key]!r}")
    if not isinstance(cfg.get("hf_hook_point_in"), str):
        raise SAEFormatError(f"{file} has no 'hf_hook_point_in' (the hook point the SAE reads)")


def read(path: Path) -> "SAE":
    """The Gemma Scope 2 SAE or transcoder in ``path`` (its folder or its ``params.safetensors``).

    Raises:
        SAEFormatError: a damaged or truncated file (named), a tensor missing or of the
            wrong shape, a width other than the folder's (both named), or an affine
            transcoder without its ``affine_skip_connection``.
    """
    folder = _folder(path)
    file, cfg = folder / PARAMS, hook_points(folder)
    _check_config(folder / CONFIG if (folder / CONFIG).is_file() else folder, cfg)
    tensors = read_safetensors(file)
    w_enc = tensors.get("w_enc")
    if w_enc is None or w_enc.ndim != 2:
        raise SAEFormatError(f"{file} has no 2-D w_enc [d, h] (it holds {', '.join(sorted(tensors)) or 'nothing'})")
    w_dec = tensors.get("w_dec")
    (d, h), d_out = w_enc.shape, (w_dec.shape[-1] if w_dec is not None and w_dec.ndim == 2 else w_enc.shape[0])
    found = _FOLDER.match(folder.name)
    check_width(file, found["width"] if found else None, h)
    want = {"w_enc": (d, h), "w_dec": (h, d_out), "b_enc": (h,), "b_dec": (d_out,), "threshold": (h,)}
    affine = bool(cfg.get("affine_connection")) or "affine_skip_connection" in tensors
    if affine:
        want["affine_skip_connection"] = (d, d_out)
    check_shapes(file, tensors, want)
    unknown = sorted(set(tensors) - set(want))
    if unknown:
        raise SAEFormatError(f"{file} holds {', '.join(unknown)}, which Gemma Scope 2's params.safetensors has not "
                             f"(valid: {', '.join(want)}, affine_skip_connection); refusing rather than guessing")
    site, output_site, why = sites(cfg)
    transcoder = output_site is not None or d_out != d
    state = {"W_enc": tensors["w_enc"], "W_dec": tensors["w_dec"], "b_enc": tensors["b_enc"], "b_dec": tensors["b_dec"]}
    if affine:
        state["W_skip"] = tensors["affine_skip_connection"]  # [d, d_out]: x @ it (SAELens: x @ W_skip.T, W_skip its .T)
    sae = build_sae(file, state, tensors["threshold"], d_in=d, d_sae=h, arch="jumprelu", normalization="none",
                    site=site, output_site=output_site, d_out=d_out if d_out != d else None,
                    apply_b_dec_to_input=False, skip="linear" if affine else None, model=_model(cfg, folder))
    sae.cfg.origin = origin("gemma-scope-2", file, hook_name=cfg.get("hf_hook_point_in"),
                            hook_name_out=cfg.get("hf_hook_point_out") if transcoder else None,
                            layer=int(found["layer"]) if found else None, width=found["width"] if found else None,
                            l0=found["l0"] if found else None, affine=affine or None, no_site=why,
                            config=str(folder / CONFIG) if (folder / CONFIG).is_file() else "inferred from the folders",
                            dtype=str(w_enc.dtype).removeprefix("torch."))
    return sae


def entries(path: Path) -> list[Entry]:
    """The Gemma Scope 2 SAEs under ``path`` (a repository snapshot, or one ``<site>/`` folder of it)."""
    def site(folder: Path) -> str | None:
        try:
            return sites(hook_points(folder))[0]
        except SAEFormatError:
            return None

    return find_entries(path, PARAMS, 2, lambda folder: match(folder) is None, site)


READERS = [Reader("gemma-scope-2", f"{PARAMS} (w_enc, w_dec, b_enc, b_dec, threshold) + {CONFIG} "
                  "(hf_hook_point_in/out), in <site>/layer_L_width_W_l0_<size>", match, read, entries, priority=31)]
