"""circuit-tracer's transcoder sets (decoderesearch/circuit-tracer 0.5, ``circuit_tracer.transcoder``):
a folder with ``config.yaml`` (``model_kind: transcoder_set``, ``feature_input_hook``,
``feature_output_hook``, optionally ``model_name``, ``scan`` and ``transcoders``, a list of
per-layer files or ``hf://`` URIs) and one ``layer_L.safetensors`` per layer, as
``TranscoderSet.to_safetensors`` and ``save_transcoders_to_cache`` write them (without a
``transcoders`` list the layers are ``layer_0..N-1.safetensors``, as circuit-tracer globs them).

Each file is a ``SingleLayerTranscoder``: ``W_enc [h, d]``, ``W_dec [h, d]``, ``b_enc``,
``b_dec``, optionally ``activation_function.threshold [h]`` (JumpReLU, else ReLU) and
``W_skip [d, d]``: ``pre = x W_enc^T + b_enc``, ``f = pre * (pre > threshold)`` (or
``ReLU(pre)``), ``x_hat = f W_dec + b_dec + x W_skip^T``, on the raw input. The hooks are
written relative to ``blocks.L`` of circuit-tracer's (unfolded) TransformerLens model and map to
interlayer's sites per layer: ``hook_resid_mid`` resid_mid.L, ``ln2.hook_normalized`` and
``mlp.hook_in`` (the MLP's input, its ``ReplacementMLP.hook_in``) mlp_in.L, ``hook_mlp_out`` and
``mlp.hook_out`` mlp_out.L. Two are exact only on some models: ``mlp.hook_out`` is the MLP
module's own output, mlp_out.L where no norm follows the MLP (Llama, Qwen; circuit-tracer's
Gemma sets write ``hook_mlp_out``); and circuit-tracer loads TransformerLens with
``fold_ln=False``, where ``ln2.hook_normalized`` is taken before ln2's weight (the MLP's input
where that weight is folded, as :func:`interlayer.naming.from_transformer_lens` reads it).

A set holds one transcoder per layer, so the folder is a layout (:func:`entries`, narrowed by
``site=``); a layer's file is read on its own when the ``config.yaml`` beside it lists it.
Cross-layer transcoders (``model_kind: cross_layer_transcoder``, ``W_enc_L``/``W_dec_L`` files),
whose features write to every later layer, have no single-output form here and are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import torch

from interlayer.errors import InterlayerError, choices

from . import SAEFormatError
from .base import Entry, Reader, origin
from .gemma_scope import build_sae, check_shapes, read_safetensors

if TYPE_CHECKING:
    from ..sae import SAE

__all__ = ["READERS", "layer_files", "read_config", "site_of"]

CONFIG = "config.yaml"
SET, CLT = "transcoder_set", "cross_layer_transcoder"
THRESHOLD = "activation_function.threshold"
KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", THRESHOLD, "W_skip")
"""The tensors of a ``SingleLayerTranscoder.to_safetensors`` file."""
_LAYER = re.compile(r"^layer_(?P<layer>\d+)\.safetensors$")
_CLT_FILE = re.compile(r"^W_(?:enc|dec)_\d+\.safetensors$")
_HOOKS = {"mlp.hook_in": "mlp_in", "mlp.hook_out": "mlp_out"}
"""circuit-tracer's own hooks on its ``ReplacementMLP`` (the rest are TransformerLens's)."""
_N = 10**6
_CLT_WHY = ("a circuit-tracer cross-layer transcoder (CLT: each layer's features read that layer and write to the "
            "MLP outputs of it and every later layer), which has no single-output form in interlayer; "
            "interlayer reads circuit-tracer's per-layer transcoder sets (model_kind: transcoder_set)")


def read_config(folder: Path) -> dict[str, Any]:
    """The ``config.yaml`` of a circuit-tracer folder, checked.

    Raises:
        SAEFormatError: the file cannot be read or parsed (PyYAML missing for a non-JSON
            YAML file included), is not a mapping, has a ``model_kind`` other than
            circuit-tracer's, or hooks that are not strings.
    """
    file = folder / CONFIG
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise SAEFormatError(f"{file} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    data = _parse(file, text)
    if not isinstance(data, dict):
        raise SAEFormatError(f"{file} holds a YAML {type(data).__name__}, not circuit-tracer's config mapping")
    kind = data.get("model_kind")
    if kind not in (SET, CLT):
        raise SAEFormatError(f"{file}: model_kind {kind!r} is not circuit-tracer's; valid: {choices([SET, CLT])}")
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(data.get(key), str):
            raise SAEFormatError(f"{file}: {key!r} must be a hook name (e.g. 'mlp.hook_in'), got {data.get(key)!r}")
    listed = data.get("transcoders")
    if listed is not None and (not isinstance(listed, list) or not all(isinstance(p, str) for p in listed)):
        raise SAEFormatError(f"{file}: 'transcoders' must be a list of paths or hf:// URIs, got {listed!r}")
    return data


def _parse(file: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)  # JSON is YAML: such a config reads without PyYAML
        except ValueError:
            raise SAEFormatError(f"{file} is YAML, which needs PyYAML: pip install 'interlayer[yaml]'") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SAEFormatError(f"{file} is not valid YAML ({err}); the config is damaged") from None


def _resolve(folder: Path, written: str) -> Path:
    """A ``transcoders`` entry as a local file: an ``hf://owner/repo/<file>`` URI is ``<file>``
    in ``folder`` (a snapshot of the repository), a relative path is relative to ``folder``."""
    if written.startswith("hf://"):
        parts = urlparse(written).path.lstrip("/").split("/", 1)
        return folder / (parts[1] if len(parts) == 2 else parts[0])
    path = Path(written).expanduser()
    return path if path.is_absolute() else folder / path


def layer_files(folder: Path, cfg: dict[str, Any]) -> dict[int, tuple[Path, str]]:
    """``{layer: (local file, as written)}`` of a set: its ``transcoders`` list (by position,
    as circuit-tracer numbers them), else the folder's ``layer_L.safetensors`` files."""
    listed = cfg.get("transcoders")
    if listed is not None:
        return {i: (_resolve(folder, p), p) for i, p in enumerate(listed)}
    found = {}
    for file in folder.glob("layer_*.safetensors"):
        name = _LAYER.match(file.name)
        if name is not None:
            found[int(name["layer"])] = (file, file.name)
    return dict(sorted(found.items()))


def site_of(hook: str, layer: int) -> tuple[str | None, str | None]:
    """``(site, None)`` of a circuit-tracer hook (relative to ``blocks.<layer>``), or ``(None, why not)``."""
    from interlayer.naming import from_transformer_lens

    if hook in _HOOKS:
        return f"{_HOOKS[hook]}.{layer}", None
    try:
        return from_transformer_lens(f"blocks.{layer}.{hook}", _N), None
    except InterlayerError as err:
        return None, f"feature hook {hook!r}: {err}"


def _is_clt_folder(folder: Path) -> bool:
    return folder.is_dir() and any(_CLT_FILE.match(p.name) for p in folder.glob("W_*_*.safetensors"))


def _config_or_reason(folder: Path) -> dict[str, Any] | str:
    if not (folder / CONFIG).is_file():
        return f"no {CONFIG}"
    try:
        return read_config(folder)
    except SAEFormatError as err:
        return str(err)


def _owner(file: Path) -> tuple[Path, dict[str, Any], int] | str:
    """``(config folder, config, layer)`` of a layer file, from the ``config.yaml`` beside or
    above it that lists it, else why there is none."""
    why = f"no circuit-tracer {CONFIG} beside it naming the hooks"
    for folder in list(file.parents)[:6]:
        cfg = _config_or_reason(folder)
        if isinstance(cfg, str):
            why = why if cfg == f"no {CONFIG}" else cfg
            continue
        if cfg["model_kind"] == CLT:
            return folder, cfg, -1
        for layer, (path, _) in layer_files(folder, cfg).items():
            if path.resolve() == file.resolve():
                return folder, cfg, layer
        why = f"{folder / CONFIG} does not list {file.name} among its layers"
    return why


def match(path: Path) -> str | None:
    """``None`` for one layer's file of a set (its ``config.yaml`` beside it listing it) or a
    cross-layer transcoder (which :func:`read` refuses, saying what it is); a set's folder
    holds one transcoder per layer and is reached through :func:`entries`."""
    if path.is_dir():
        cfg = _config_or_reason(path)
        if isinstance(cfg, str):
            return None if _is_clt_folder(path) else cfg
        if cfg["model_kind"] == CLT:
            return None
        return (f"a transcoder set of {len(layer_files(path, cfg))} layers, one transcoder each: pass site= or "
                "name one layer's file")
    if path.suffix != ".safetensors":
        return "not a folder or a .safetensors file"
    if _CLT_FILE.match(path.name) and _is_clt_folder(path.parent):
        return None
    found = _owner(path)
    return found if isinstance(found, str) else None


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    """A layer file's tensors: circuit-tracer's own names, checked for shape (widths named)."""
    if not file.is_file():
        raise SAEFormatError(f"{file} does not exist; interlayer reads no network: download the set's files into "
                             "the folder (e.g. huggingface-cli download <repo> --local-dir <folder>)")
    tensors = {} if file.suffix == ".npz" else read_safetensors(file)
    if file.suffix == ".npz" or "w_enc" in tensors:
        raise SAEFormatError(f"{file} is in Gemma Scope's own layout (params.npz / w_enc), which circuit-tracer "
                             "converts on load; load its folder directly: interlayer.saes.load reads it as "
                             "gemma-scope or gemma-scope-2")
    w_enc, w_dec = tensors.get("W_enc"), tensors.get("W_dec")
    if w_enc is None or w_enc.ndim != 2 or w_dec is None or w_dec.ndim != 2:
        raise SAEFormatError(f"{file} has no 2-D W_enc [h, d] and W_dec [h, d] of a SingleLayerTranscoder "
                             f"(it holds {', '.join(sorted(tensors)) or 'nothing'})")
    unknown = sorted(set(tensors) - set(KEYS))
    if unknown:
        raise SAEFormatError(f"{file} holds {', '.join(unknown)}, which a SingleLayerTranscoder file has not "
                             f"(valid: {', '.join(KEYS)}); refusing rather than guessing")
    (h, d), (h_dec, d_out) = w_enc.shape, w_dec.shape
    if h_dec != h:
        raise SAEFormatError(f"{file}: W_enc {tuple(w_enc.shape)} has {h} latents but W_dec {tuple(w_dec.shape)} "
                             f"has {h_dec}; the encoder and decoder are not of one transcoder")
    theta = tensors.get(THRESHOLD)
    if theta is not None and (theta.numel() == 1 or (theta.numel() == h and theta.shape[-1:] == (h,))):
        tensors[THRESHOLD] = theta.reshape(-1).expand(h)  # one for every latent, or [1, h]: as they broadcast
    want = {"W_enc": (h, d), "W_dec": (h, d), "b_enc": (h,), "b_dec": (d,)}
    want.update({THRESHOLD: (h,)} if THRESHOLD in tensors else {})
    want.update({"W_skip": (d, d)} if "W_skip" in tensors else {})
    check_shapes(file, tensors, want)
    return tensors


def read(path: Path) -> "SAE":
    """One layer of a circuit-tracer transcoder set (its ``layer_L.safetensors``).

    Raises:
        SAEFormatError: a cross-layer transcoder (named as such); no ``config.yaml`` listing the
            file; a damaged or truncated file (named); tensors missing, unknown or of widths
            that disagree (each named); a negative JumpReLU threshold (circuit-tracer passes
            negative pre-activations above it, interlayer's JumpReLU does not).
    """
    if path.is_dir() or _CLT_FILE.match(path.name):
        cfg = _config_or_reason(path if path.is_dir() else path.parent)
        if isinstance(cfg, str) or cfg["model_kind"] == CLT:
            raise SAEFormatError(f"{path} is {_CLT_WHY}")
        raise SAEFormatError(f"{path} is a circuit-tracer transcoder set; load one layer: pass site= or its file")
    found = _owner(path)
    if isinstance(found, str):
        raise SAEFormatError(f"{path}: {found}")
    folder, cfg, layer = found
    if cfg["model_kind"] == CLT:
        raise SAEFormatError(f"{folder / CONFIG} says model_kind: {CLT}: {path} is part of {_CLT_WHY}")
    tensors = _tensors(path)
    threshold = tensors.get(THRESHOLD)
    if threshold is not None and bool((threshold < 0).any()):
        raise SAEFormatError(f"{path}: {int((threshold < 0).sum())} JumpReLU thresholds are negative; circuit-tracer "
                             "keeps pre-activations above them (pre * (pre > threshold)), negative ones included, "
                             "which interlayer's JumpReLU (thresholds >= 0) cannot represent")
    hook_in, hook_out = cfg["feature_input_hook"], cfg["feature_output_hook"]
    site, why = site_of(hook_in, layer)
    output_site, why_out = site_of(hook_out, layer)
    (h, d), skip = tensors["W_enc"].shape, "W_skip" in tensors
    state = {"W_enc": tensors["W_enc"].T, "W_dec": tensors["W_dec"], "b_enc": tensors["b_enc"],
             "b_dec": tensors["b_dec"]}
    if skip:
        state["W_skip"] = tensors["W_skip"].T  # circuit-tracer adds x @ W_skip.T; interlayer x @ W_skip
    model = cfg.get("model_name") if isinstance(cfg.get("model_name"), str) else None
    sae = build_sae(path, state, threshold, d_in=d, d_sae=h, arch="jumprelu" if threshold is not None else "relu",
                    normalization="none", site=site, output_site=output_site, apply_b_dec_to_input=False,
                    skip="linear" if skip else None, model=model)
    sae.cfg.origin = origin("circuit-tracer", path, config=str(folder / CONFIG), layer=layer,
                            hook_name=f"blocks.{layer}.{hook_in}", hook_name_out=f"blocks.{layer}.{hook_out}",
                            scan=cfg.get("scan") if isinstance(cfg.get("scan"), str) else None,
                            no_site=why or why_out, dtype=str(tensors["W_enc"].dtype).removeprefix("torch."))
    return sae


def entries(path: Path) -> list[Entry]:
    """The layers of a circuit-tracer transcoder set at ``path`` (one transcoder per layer)."""
    if not path.is_dir():
        return []
    cfg = _config_or_reason(path)
    if isinstance(cfg, str) or cfg["model_kind"] != SET:
        return []
    return [Entry(file, site_of(cfg["feature_input_hook"], layer)[0], f"layer {layer} ({written})")
            for layer, (file, written) in layer_files(path, cfg).items()]


READERS = [Reader("circuit-tracer", f"{CONFIG} (model_kind: {SET}, feature_input_hook/feature_output_hook) + "
                  "layer_L.safetensors (W_enc, W_dec, b_enc, b_dec, activation_function.threshold, W_skip)",
                  match, read, entries, priority=33)]
