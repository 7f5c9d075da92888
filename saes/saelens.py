"""SAELens on-disk format: ``cfg.json`` plus ``sae_weights.safetensors``.

Written and read with plain ``json`` and ``safetensors``; SAELens itself is not
needed. The mapping (checked against SAELens 6.54 in the tests):

==============  ===============================================================
interlayer      SAELens
==============  ===============================================================
relu            ``standard``
topk            ``topk`` with ``k`` (``rescale_acts_by_decoder_norm: false``)
jumprelu        ``jumprelu``, ``threshold = exp(log_threshold)``
batchtopk       ``jumprelu`` with every threshold at the batch threshold (the
                inference form SAELens itself saves a BatchTopK SAE in)
standardize     ``normalize_activations: layer_norm`` (the same formula)
mean_norm       folded into the weights: ``W_enc c``, ``W_dec / c``, ``b_dec / c``
==============  ===============================================================

SAELens has no top-AFA architecture, so a top-AFA SAE is refused for export (its
weights would load there but encode with another rule). Importing accepts
``standard``, ``topk``, ``jumprelu`` and a training-format ``batchtopk``; a
decoder-norm rescaling or ``apply_b_dec_to_input: false`` is folded into the weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_json_atomic, write_safetensors_atomic

from .formats import SAELENS_CONFIG, SAELENS_WEIGHTS, is_interlayer_dir, is_saelens_dir
from .sae import SAE, SAEConfig

EXPORTABLE = ("relu", "topk", "batchtopk", "jumprelu")
_IMPORTABLE = ("standard", "topk", "jumprelu", "batchtopk")
_NORMALIZATION_IN = {"none": "none", "layer_norm": "standardize", "expected_average_only_in": "none"}


def _hook_name(site: str | None) -> str | None:
    if site is None:
        return None
    from interlayer.model.sites import parse_site

    try:
        parsed = parse_site(site, 10**6)
    except InterlayerError:
        return site
    return f"blocks.{parsed.layer}.hook_{parsed.kind}"


def to_saelens(sae: SAE, out: str | Path) -> Path:
    """Write ``sae`` in the SAELens on-disk format, loadable with
    ``sae_lens.SAE.load_from_disk(out)``; its ``encode``/``decode`` then equal ours."""
    cfg = sae.cfg
    if cfg.arch not in EXPORTABLE:
        raise InterlayerError(f"SAELens has no {cfg.arch!r} architecture, so this SAE cannot be exported without "
                              f"changing what it computes; exportable architectures: {choices(EXPORTABLE)}")
    with torch.no_grad():
        w_enc, w_dec = sae.W_enc.detach().float().cpu(), sae.W_dec.detach().float().cpu()
        b_enc, b_dec = sae.b_enc.detach().float().cpu(), sae.b_dec.detach().float().cpu()
        normalize = "none"
        if cfg.normalization == "mean_norm":
            c = cfg.scale
            w_enc, w_dec, b_dec = w_enc * c, w_dec / c, b_dec / c
        elif cfg.normalization == "standardize":
            normalize = "layer_norm"
        tensors = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
        arch = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "jumprelu": "jumprelu"}[cfg.arch]
        if cfg.arch == "jumprelu":
            tensors["threshold"] = sae.activation.threshold.detach().float().cpu()
        elif cfg.arch == "batchtopk":
            theta = float(sae.activation.threshold)
            if theta < 0:
                raise InterlayerError("this BatchTopK SAE has no inference threshold yet (it was never trained)")
            tensors["threshold"] = torch.full((cfg.d_sae,), theta)
    config: dict[str, Any] = {
        "architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": normalize, "reshape_activations": "none",
        "metadata": {"model_name": cfg.model, "hook_name": _hook_name(cfg.site), "hook_head_index": None,
                     "prepend_bos": True, "interlayer_arch": cfg.arch, "interlayer_site": cfg.site},
    }
    if arch == "topk":
        config.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_safetensors_atomic(out / SAELENS_WEIGHTS, {k: v.contiguous() for k, v in tensors.items()})
    write_json_atomic(out / SAELENS_CONFIG, config)
    return out


def from_saelens(path: str | Path, site: str | None = None) -> SAE:
    """Load an SAE saved in the SAELens on-disk format as an interlayer :class:`SAE`
    whose forward pass equals SAELens's ``decode(encode(x))``."""
    path = Path(path)
    if not is_saelens_dir(path):
        raise InterlayerError(f"{path} is not a SAELens SAE directory: it needs {SAELENS_CONFIG} and {SAELENS_WEIGHTS}")
    from .formats import read_json_config

    config = read_json_config(path / SAELENS_CONFIG)
    arch = config.get("architecture", "standard")
    if arch not in _IMPORTABLE:
        raise InterlayerError(f"{path}: SAELens architecture {arch!r} is not supported; supported: {choices(_IMPORTABLE)}")
    norm = config.get("normalize_activations", "none")
    if norm not in _NORMALIZATION_IN:
        raise InterlayerError(f"{path}: normalize_activations {norm!r} has no interlayer equivalent; supported: "
                              f"{choices(_NORMALIZATION_IN)}")
    if config.get("reshape_activations", "none") != "none":
        raise InterlayerError(f"{path}: reshape_activations {config['reshape_activations']!r} (attention heads) "
                              "is not supported; only 'none'")
    tensors = {k: v.float() for k, v in load_file(str(path / SAELENS_WEIGHTS)).items()}
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        if name not in tensors:
            raise InterlayerError(f"{path / SAELENS_WEIGHTS} lacks {name}; it has {choices(sorted(tensors))}")
    w_enc, w_dec, b_enc, b_dec = tensors["W_enc"], tensors["W_dec"], tensors["b_enc"], tensors["b_dec"]
    d_in, d_sae = int(config.get("d_in", w_enc.shape[0])), int(config.get("d_sae", w_enc.shape[1]))
    if w_enc.shape != (d_in, d_sae) or w_dec.shape != (d_sae, d_in):
        raise InterlayerError(f"{path}: W_enc {tuple(w_enc.shape)} / W_dec {tuple(w_dec.shape)} do not match "
                              f"d_in={d_in}, d_sae={d_sae}")
    if not config.get("apply_b_dec_to_input", True):
        b_enc = b_enc + b_dec @ w_enc  # x W + b  ==  (x - b_dec) W + (b + b_dec W)
    if arch in ("topk", "batchtopk") and config.get("rescale_acts_by_decoder_norm", False):
        norms = w_dec.norm(dim=-1)
        w_enc, b_enc, w_dec = w_enc * norms, b_enc * norms, w_dec / norms.unsqueeze(-1)
    metadata = config.get("metadata") or {}
    ours = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "batchtopk"}[arch]
    k = int(config["k"]) if arch in ("topk", "batchtopk") else None
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, arch=ours, k=k, normalization=_NORMALIZATION_IN[norm],
                    model=metadata.get("model_name"), site=site or metadata.get("interlayer_site") or metadata.get("hook_name"))
    sae = SAE.empty(cfg)
    state = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec}
    if arch == "jumprelu":
        if "threshold" in tensors:
            state["activation.log_threshold"] = tensors["threshold"].clamp_min(1e-30).log()
        elif "log_threshold" in tensors:
            state["activation.log_threshold"] = tensors["log_threshold"]
        else:
            raise InterlayerError(f"{path / SAELENS_WEIGHTS}: a jumprelu SAE needs 'threshold' or 'log_threshold'")
    if arch == "batchtopk":
        if "topk_threshold" not in tensors:
            raise InterlayerError(f"{path / SAELENS_WEIGHTS}: a batchtopk SAE needs 'topk_threshold'")
        state["activation.threshold"] = tensors["topk_threshold"].reshape(())
    sae.load_tensors(state, str(path / SAELENS_WEIGHTS))
    return sae.eval()


def load_sae(path: str | Path) -> SAE:
    """An SAE saved by interlayer (:meth:`SAE.load`), or one in the SAELens on-disk format
    (:func:`from_saelens`)."""
    if is_saelens_dir(path) and not is_interlayer_dir(path):
        return from_saelens(path)
    return SAE.load(path)
