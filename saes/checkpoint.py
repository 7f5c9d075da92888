"""Starting an SAE's training: fresh (initialised from the source's first batches) or
resumed from its checkpoint, one atomic safetensors file holding the weights, the Adam
state, the dead-latent counters, the source position and the run's identity. A
checkpoint written by another run (other architecture, config, data or options) is
refused by :func:`interlayer.io.checkpointing.check_resume_identity`, naming each
difference."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from interlayer.distributed import World, broadcast_object, raise_together
from interlayer.errors import InterlayerError
from interlayer.io.checkpointing import (CheckpointMismatchError, check_resume_identity, load_optimizer,
                                        optimizer_tensors)
from interlayer.io.files import write_safetensors_atomic

from .normalization import mean_norm_scale, normalize
from .options import TrainOptions
from .sae import SAE, SAEConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.safetensors"
"""The checkpoint's file name in a run's directory."""


class NonFiniteError(InterlayerError):
    """NaN or inf in the training activations or the loss; training stopped."""


def config_identity(cfg: SAEConfig) -> dict[str, Any]:
    """The config a resumed run must share (its mean-norm scale is estimated by the run);
    top-AFA's fields only where they apply, so older checkpoints of other SAEs still match."""
    out = {**cfg.to_dict(), "scale": None}
    if out.get("afa_form") is None:
        out.pop("afa_form")
    if not out.get("authors_exact"):
        out.pop("authors_exact")
    return out


def kept_message(ckpt: Path | None) -> str:
    """What a stopped run leaves: its last good checkpoint (and step), or none."""
    if ckpt is None:
        return "No checkpoint directory was given."
    if ckpt.is_file():
        with safe_open(str(ckpt), "pt") as handle:
            step = json.loads(handle.metadata()["state"])["step"]
        return f"The last good checkpoint, {ckpt} (step {step}), is kept."
    return "No checkpoint had been written yet."


def save_checkpoint(ckpt: Path, sae: SAE, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                    identity: dict[str, Any]) -> None:
    """Write the checkpoint atomically (weights, Adam state, counters, position, identity)."""
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"sae.{k}": v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    adam, param_groups = optimizer_tensors(optimizer)
    tensors.update(adam)
    tensors["trainer.dead"] = state["dead"].cpu()
    tensors["trainer.window"] = state["window"].cpu()
    meta = {"step": state["step"], "source": state["source"], "history": state["history"], "identity": identity,
            "seconds": state["seconds"],
            "sae_cfg": sae.cfg.to_dict(), "param_groups": param_groups}
    write_safetensors_atomic(ckpt, tensors, metadata={"state": json.dumps(meta)})


def read_checkpoint(ckpt: Path, identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A checkpoint's metadata and tensors, refused when another run wrote it."""
    try:
        with safe_open(str(ckpt), "pt") as handle:
            meta = json.loads(handle.metadata()["state"])
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as err:  # a truncated or foreign file
        raise CheckpointMismatchError(f"{ckpt} is not a readable SAE checkpoint ({err}); delete it or use another --out") from err
    check_resume_identity(meta.get("identity", {}), identity, what="SAE training run", path=ckpt)
    log.info("resuming SAE training from %s at step %d", ckpt, meta["step"])
    return meta, tensors


def restore(meta: dict[str, Any], tensors: dict[str, torch.Tensor], where: str, options: TrainOptions,
            device: str | torch.device | None) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    """The SAE, optimizer and trainer state of a checkpoint :func:`read_checkpoint` read."""
    sae = SAE(SAEConfig.from_dict(meta["sae_cfg"]), seed=options.seed)
    sae.load_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")}, where)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=options.lr, betas=(options.beta1, options.beta2))
    load_optimizer(optimizer, tensors, meta["param_groups"])
    return sae, optimizer, {"step": meta["step"], "source": meta["source"], "history": meta["history"],
                            "seconds": meta.get("seconds", 0.0),
                            "dead": tensors["trainer.dead"].to(sae.device),
                            "window": tensors["trainer.window"].to(sae.device)}


def start(ckpt: Path | None, identity: dict[str, Any], cfg: SAEConfig, options: TrainOptions,
          device: str | torch.device | None, sample: Callable[[int], torch.Tensor],
          world: World) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    """Resume from the checkpoint, or start fresh. With several ranks, rank 0's checkpoint
    decides and its contents are broadcast, so the ranks need not share a filesystem; a
    fresh start is the same on every rank (same seed, same global first batches)."""
    if not world.distributed:
        if ckpt is not None and ckpt.is_file():
            return restore(*read_checkpoint(ckpt, identity), str(ckpt), options, device)
        return fresh_start(sample(options.init_batches), cfg, options, device)
    payload, error = None, None
    if world.main and ckpt is not None and ckpt.is_file():
        try:
            payload = read_checkpoint(ckpt, identity)
        except InterlayerError as err:
            error = err
    raise_together(error, f"opening the checkpoint {ckpt}")
    payload = broadcast_object(payload, what="sharing rank 0's checkpoint")
    if payload is None:
        return fresh_start(sample(options.init_batches), cfg, options, device)
    return restore(*payload, str(ckpt), options, device)


def initialise(sae: SAE, sample: torch.Tensor, options: TrainOptions) -> None:
    """``b_dec`` from the mean of the (normalised) first batches, unless it starts at zeros."""
    if options.b_dec_start(sae.cfg) == "mean":
        with torch.no_grad():
            x_in, _ = normalize(sample.to(sae.W_enc.dtype), sae.cfg.normalization, sae.cfg.scale)
            sae.b_dec.copy_(x_in.mean(0))


def fresh_start(sample: torch.Tensor, cfg: SAEConfig, options: TrainOptions,
                device: str | torch.device | None) -> tuple[SAE, torch.optim.Optimizer, dict[str, Any]]:
    """A new SAE initialised from the source's first batches, its optimizer and an empty state."""
    if not torch.isfinite(sample).all():
        raise NonFiniteError("the first batches of the source hold NaN or inf; cannot initialise the SAE")
    if cfg.normalization == "mean_norm":
        cfg = dataclasses.replace(cfg, scale=mean_norm_scale(sample))
    sae = SAE(cfg, seed=options.seed).to(device)
    initialise(sae, sample.to(sae.device), options)
    optimizer = torch.optim.Adam(sae.parameters(), lr=options.lr, betas=(options.beta1, options.beta2))
    state = {"step": 0, "source": None, "history": [], "seconds": 0.0,
             "dead": torch.zeros(cfg.d_sae, dtype=torch.long, device=sae.device),
             "window": torch.zeros(cfg.d_sae, dtype=torch.bool, device=sae.device)}
    return sae, optimizer, state


__all__ = ["CHECKPOINT", "NonFiniteError", "CheckpointMismatchError", "config_identity", "start", "fresh_start",
           "restore", "read_checkpoint", "save_checkpoint", "kept_message", "initialise"]
