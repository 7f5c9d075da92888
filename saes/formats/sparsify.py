"""EleutherAI/sparsify's SAEs and transcoders (``SparseCoder.save_to_disk``): a folder
``<hookpoint>/`` with ``cfg.json`` (a ``SparseCoderConfig`` plus ``d_in``, no
``format``) and ``sae.safetensors`` (``encoder.weight [h, d]``, ``encoder.bias``,
``W_dec [h, d]``, ``b_dec``, optional ``W_skip [d, d]`` applied as ``x @ W_skip.T``). The
same two file names as interlayer's own format: the config's content tells them apart.

sparsify encodes ``x - b_dec`` (``transcode``: the raw ``x``), keeps the top-``k`` (or
the per-group max, ``groupmax``) of ``ReLU(pre)`` and decodes ``f W_dec + b_dec``. A run
folder holds one such folder per hookpoint (``layers.6``: block 6's output, resid_post.6;
``layers.6.mlp``: the MLP). A transcoder on ``layers.l.mlp`` reads the MLP module's input
(after the pre-MLP norm: ``site`` mlp_in.l) and predicts its output (``output_site``
mlp_out.l); one on ``layers.l`` reads the block's input (resid_pre.l) and predicts its
output (resid_post.l). The hookpoint as written is kept in ``origin``. :func:`to_sparsify` writes one back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interlayer.errors import InterlayerError, choices

from . import CONFIG, WEIGHTS, SAEFormatError, looks_like_sparsify
from .base import Entry, Reader, find_entries, missing_files, load_state, origin

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["to_sparsify", "READERS", "EXPORTABLE"]

ACTIVATIONS = ("topk", "groupmax")
"""sparsify's activations, read as interlayer architectures of the same name."""
EXPORTABLE = ("topk", "groupmax")
"""The interlayer architectures :func:`to_sparsify` writes."""
_LAYER = re.compile(r"^(?P<blocks>(?:[a-z_]+\.)*(?:layers|h))\.(?P<layer>\d+)(?P<sub>\.[a-z_.]+)?$")


def _config(path: Path) -> dict[str, Any] | str:
    try:
        data = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return f"{CONFIG} is not valid JSON"
    if not isinstance(data, dict) or not looks_like_sparsify(data) or "d_in" not in data:
        return f"{CONFIG} has no sparsify fields (d_in, k, num_latents/expansion_factor, transcode)"
    return data


def match(path: Path) -> str | None:
    """``None`` for a folder holding one sparsify SAE or transcoder, else why not."""
    why = missing_files(path, (CONFIG, WEIGHTS))
    if why:
        return why
    data = _config(path)
    return data if isinstance(data, str) else None


def sites(hookpoint: str, transcode: bool) -> tuple[str | None, str | None]:
    """The interlayer ``(site, output_site)`` of a sparsify hookpoint (``None`` where it has
    none): an SAE reads the module's output; a transcoder reads the module's input and
    predicts its output (``layers.l``: resid_pre.l -> resid_post.l; ``layers.l.mlp``:
    mlp_in.l, the MLP's input after its pre-norm, -> mlp_out.l)."""
    from interlayer.naming import from_sparsify

    found = _LAYER.match(hookpoint)
    layer = int(found.group("layer")) if found else 0
    try:
        out = from_sparsify(hookpoint, layer + 1)
    except InterlayerError:
        return None, None
    if not transcode:
        return out, None
    kind = out.split(".")[0]
    inputs = {"resid_post": "resid_pre", "mlp_out": "mlp_in"}
    return (f"{inputs[kind]}.{layer}" if kind in inputs else None), out


def _check_config(path: Path, data: dict[str, Any]) -> tuple[int, int, int]:
    file = path / CONFIG
    activation = data.get("activation", "topk")
    if activation not in ACTIVATIONS:
        raise SAEFormatError(f"{file}: sparsify activation {activation!r} is not one interlayer reads; "
                             f"valid: {choices(list(ACTIVATIONS))}")
    if data.get("signed"):
        raise SAEFormatError(f"{file}: 'signed': true is not a field of sparsify's SparseCoderConfig (its source "
                             "has activation, expansion_factor, num_latents, k, multi_topk, skip_connection, "
                             "transcode) and interlayer does not know its meaning; refusing rather than guessing")
    ints = {key: data.get(key, 0) for key in ("d_in", "k", "num_latents", "expansion_factor")}
    bad = [f"{k}={v!r}" for k, v in ints.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0]
    if bad or ints["d_in"] < 1 or ints["k"] < 1:
        raise SAEFormatError(f"{file}: d_in and k must be positive whole numbers, num_latents and "
                             f"expansion_factor whole numbers >= 0; got {', '.join(bad) or ints}")
    return ints["d_in"], ints["num_latents"] or ints["d_in"] * ints["expansion_factor"], ints["k"]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path / WEIGHTS))
    except Exception as err:  # safetensors raises its own error type for a damaged or truncated file
        raise SAEFormatError(f"{path / WEIGHTS} cannot be read as safetensors ({err}); the file is damaged or "
                             "truncated") from None


def read(path: Path) -> "SAE":
    """The sparsify SAE or transcoder in ``path`` as an interlayer :class:`~interlayer.saes.SAE`."""
    from ..sae import SAE, SAEConfig
    from ..archs import groupmax  # noqa: F401  (registers groupmax)

    data = _config(path)
    if isinstance(data, str):
        raise SAEFormatError(f"{path}: {data}")
    d_in, width, k = _check_config(path, data)
    tensors = _tensors(path)
    if "W_dec" not in tensors:
        raise SAEFormatError(f"{path / WEIGHTS} has no W_dec (saved without a decoder); interlayer needs the decoder")
    enc = tensors.get("encoder.weight")
    if enc is None or enc.ndim != 2 or enc.shape[0] != width:
        raise SAEFormatError(f"{path}: {CONFIG} gives {width} latents (num_latents={data.get('num_latents', 0)}, "
                             f"expansion_factor={data.get('expansion_factor')}, d_in={d_in}) but {WEIGHTS}'s "
                             f"encoder.weight has shape {None if enc is None else tuple(enc.shape)}")
    transcode, skip = bool(data.get("transcode")), bool(data.get("skip_connection"))
    hookpoint = path.name
    site, output_site = sites(hookpoint, transcode)
    try:
        cfg = SAEConfig(d_in, width, arch=data.get("activation", "topk"), k=k, normalization="none",
                        site=site, output_site=output_site, apply_b_dec_to_input=not transcode,
                        skip="linear" if skip else None)
    except InterlayerError as err:
        raise SAEFormatError(f"{path / CONFIG}: {err}") from None
    sae = SAE.empty(cfg)
    state = {"W_enc": enc.T, "b_enc": tensors.get("encoder.bias"), "W_dec": tensors["W_dec"],
             "b_dec": tensors.get("b_dec")}
    if "W_skip" in tensors:
        state["W_skip"] = tensors["W_skip"].T
    load_state(sae, state, path / WEIGHTS)
    sae.cfg.origin = origin("sparsify", path, hookpoint=hookpoint, transcode=transcode,
                            dtype=str(enc.dtype).removeprefix("torch."))
    return sae


def entries(path: Path) -> list[Entry]:
    """The sparsify SAEs of a run folder (one ``<hookpoint>/`` each, one or two levels down)."""
    def site(folder: Path) -> str | None:
        data = _config(folder)
        return sites(folder.name, bool(data.get("transcode")))[0] if isinstance(data, dict) else None

    return find_entries(path, CONFIG, 2, lambda folder: match(folder) is None, site)


def _sparsify_tensors(sae: "SAE") -> tuple[dict[str, torch.Tensor], bool]:
    """sparsify's tensors of an interlayer SAE: mean_norm's scale, b_skip and the choice of
    subtracting ``b_dec`` folded into the weights and biases (same outputs)."""
    cfg = sae.cfg
    c = cfg.scale if cfg.normalization == "mean_norm" else 1.0
    with torch.no_grad():
        w_enc, b_dec = sae.W_enc.detach().float().cpu(), sae.b_dec.detach().float().cpu()
        out_bias = b_dec / c + (sae.b_skip.detach().float().cpu() if cfg.skip == "affine" else 0)
        transcode = cfg.transcoder
        b_enc = sae.b_enc.detach().float().cpu()
        if cfg.apply_b_dec_to_input:
            b_enc = b_enc - b_dec @ w_enc
        if not transcode:  # sparsify subtracts its b_dec (the output bias) from the input
            b_enc = b_enc + out_bias @ (c * w_enc)
        tensors = {"encoder.weight": (c * w_enc).T.contiguous(), "encoder.bias": b_enc.contiguous(),
                   "W_dec": (sae.W_dec.detach().float().cpu() / c).contiguous(), "b_dec": out_bias.contiguous()}
        if cfg.skip is not None:
            tensors["W_skip"] = sae.W_skip.detach().float().cpu().T.contiguous()
    return tensors, transcode


def to_sparsify(sae: "SAE", out: str | Path) -> Path:
    """Write ``sae`` (an SAE or transcoder) as a sparsify ``<hookpoint>/`` folder at ``out``
    (``cfg.json`` + ``sae.safetensors``, atomically), loadable by
    ``sparsify.SparseCoder.load_from_disk``; returns ``out``.

    Raises:
        InterlayerError: an architecture sparsify has no activation for (only
            :data:`EXPORTABLE` are written), a ``standardize`` normalisation (per-batch
            statistics sparsify cannot hold), an output width other than ``d_in``, or a
            top-AFA SAE in the authors' mode (no ``b_enc``).
    """
    from interlayer.io.files import write_json_atomic, write_safetensors_atomic

    cfg = sae.cfg
    if cfg.arch not in EXPORTABLE or cfg.authors_exact:
        raise InterlayerError(f"sparsify has no activation for architecture {cfg.arch!r}; exportable: "
                              f"{choices(list(EXPORTABLE))}")
    if cfg.normalization not in ("none", "mean_norm"):
        raise InterlayerError(f"sparsify SAEs read raw activations; normalization {cfg.normalization!r} cannot be "
                              "folded into the weights (exportable: 'none', 'mean_norm')")
    if cfg.output_width != cfg.d_in:
        raise InterlayerError(f"sparsify's decoder and skip are d_in wide; this SAE outputs d_out={cfg.output_width} "
                              f"from d_in={cfg.d_in}")
    tensors, transcode = _sparsify_tensors(sae)
    out = Path(out)
    write_safetensors_atomic(out / WEIGHTS, tensors, metadata={"format": "pt"})
    write_json_atomic(out / CONFIG, {"activation": cfg.arch, "expansion_factor": max(1, cfg.d_sae // cfg.d_in),
                                     "normalize_decoder": True, "num_latents": cfg.d_sae, "k": int(cfg.k),
                                     "multi_topk": False, "skip_connection": cfg.skip is not None,
                                     "transcode": transcode, "d_in": cfg.d_in})
    return out


READERS = [Reader("sparsify", f"{CONFIG} (a SparseCoderConfig with d_in, no \"format\") + {WEIGHTS}", match, read,
                  entries, priority=20)]
