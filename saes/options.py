"""How to train an SAE: :class:`TrainOptions` (the trainer's options, shared by
:func:`~interlayer.saes.train_sae` and ``interlayer sae train``) and the learning-rate
schedule :func:`lr_factor`. What depends on the architecture (which coefficient weights
its sparsity loss, the AFA loss's default weight) is read from its registered
:class:`~interlayer.saes.archs.Architecture`; the SAE's own shape, JumpReLU's initial
threshold included, is its :class:`~interlayer.saes.SAEConfig`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from interlayer.errors import InterlayerError
from interlayer.options import Options, option

from .archs import REGISTRY, ArchConfig, architecture


@dataclass
class TrainOptions(Options):
    """How to train an SAE (shared by :func:`train_sae` and ``interlayer sae train``)."""

    tokens: int = option(2_000_000, "training tokens; the run takes ceil(tokens / tokens-per-step) steps", min=1)
    batch_size: int = option(4096, "training tokens per optimizer step", min=1, flag="--tokens-per-step",
                             group="training")
    lr: float = option(3e-4, "Adam learning rate after warmup", above=0)
    warmup_steps: int | None = option(None, "linear learning-rate warmup steps (default: 50; 0 in top-AFA's "
                                            "authors-exact mode)", min=0)
    decay_fraction: float | None = option(None, "final fraction of the steps over which the learning rate decays "
                                                "linearly to 0 (default: 0.2; 0 in top-AFA's authors-exact mode)", min=0)
    beta1: float = option(0.9, "Adam beta1")
    beta2: float = option(0.99, "Adam beta2")
    l1_coeff: float = option(1e-3, "L1 coefficient (relu)", min=0)
    l0_coeff: float = option(1e-3, "L0 coefficient (jumprelu)", min=0)
    afa_coeff: float | None = option(None, "AFA loss coefficient (default: 1/32 for topafa, 0 for the others)", min=0)
    auxk_coeff: float = option(1 / 32, "AuxK loss coefficient (topk, batchtopk, topafa)", min=0)
    aux_k: int = option(512, "dead latents the AuxK loss may use per token", min=1)
    dead_after: int = option(5, "a latent that has not fired for this many batches is dead", min=1)
    b_dec_init: str | None = option(None, "initial b_dec: 'mean' of the first batches (normalised) or 'zeros' "
                                          "(default: zeros for top-AFA's authors form, as its authors; mean for the "
                                          "others)", choices=("mean", "zeros"))
    init_batches: int = option(4, "batches used to estimate the mean-norm scale and the initial b_dec", min=1)
    seed: int = option(0, "seed of the weights and of the row order")
    checkpoint_every: int = option(200, "write a resumable checkpoint every N steps (0: never)", min=0)
    log_every: int = option(20, "record a row of the training history every N steps", min=1)
    dead_window_tokens: int = option(1_000_000, "report the latents that never fired in the last this many training "
                                                "tokens (at most the whole run)", min=1)
    tf32: bool = option(False, "CUDA only: fp32 matrix products on the TensorFloat-32 tensor cores (a 10-bit "
                               "mantissa, as sparsify trains); no effect on the CPU", group="training")
    shuffle: str = option("feistel", "the order of each epoch's cached rows: 'feistel' (a seeded bijection, O(1) "
                                     "memory) or 'randperm' (the order of runs started before it, to resume them)",
                          choices=("feistel", "randperm"), group="training")
    progress: bool = option(True, "show a progress bar with tokens/s, NMSE, L0 and dead %", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # bounds and choices of every field, those of subclasses included
        if self.decay_fraction is not None and not 0 <= self.decay_fraction <= 1:
            raise InterlayerError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")

    @property
    def steps(self) -> int:
        """Optimizer steps of the run: ``ceil(tokens / batch_size)``."""
        return math.ceil(self.tokens / self.batch_size)

    def b_dec_start(self, cfg: ArchConfig) -> str:
        """``b_dec_init``, or its default for ``cfg``: zeros for top-AFA in the authors'
        form (their code), the mean for the others (the centred top-AFA form included).
        On Gemma 3 270M a TopK SAE (k=8) started from zeros had 98% of its latents silent
        over its last 1M tokens; one (k=32) from the mean, 37% (README)."""
        return self.b_dec_init or ("zeros" if cfg.afa_form == "authors" else "mean")

    def afa(self, arch: str) -> float:
        """The AFA loss's weight for an SAE of architecture ``arch``: ``afa_coeff``, or the
        architecture's default (1/32 for top-AFA, 0 for the others)."""
        return architecture(arch).afa_coefficient if self.afa_coeff is None else self.afa_coeff

    def sparsity(self, arch: str) -> float:
        """The weight of architecture ``arch``'s sparsity loss (``l1_coeff`` for ReLU,
        ``l0_coeff`` for JumpReLU; 0 for an architecture without one)."""
        field = architecture(arch).sparsity_coefficient
        return float(getattr(self, field)) if field is not None else 0.0

    def warmup(self, cfg: ArchConfig) -> int:
        """``warmup_steps``, or its default: 50, and 0 in the authors-exact mode."""
        return (0 if cfg.authors_exact else 50) if self.warmup_steps is None else self.warmup_steps

    def decay(self, cfg: ArchConfig) -> float:
        """``decay_fraction``, or its default: 0.2, and 0 in the authors-exact mode."""
        return (0.0 if cfg.authors_exact else 0.2) if self.decay_fraction is None else self.decay_fraction

    def check(self, cfg: ArchConfig) -> None:
        """Refuse options the SAE's mode cannot honour (before any training)."""
        if not architecture(cfg.arch).trainable:  # a Gated SAE: loaded and evaluated, not trained
            raise InterlayerError(f"architecture {cfg.arch!r} is loaded and evaluated, not trained by interlayer; "
                                  f"trainable: {', '.join(n for n, a in REGISTRY.items() if a.trainable)}")
        if cfg.authors_exact and (self.warmup(cfg) or self.decay(cfg)):
            raise InterlayerError("top-AFA's authors-exact mode trains at a constant learning rate: warmup_steps and "
                                  f"decay_fraction must be 0 (got {self.warmup(cfg)} and {self.decay(cfg)})")

    def identity(self, cfg: ArchConfig | None = None) -> dict[str, Any]:
        """The options a resumed run must share (not progress or logging); with ``cfg``,
        the learning-rate schedule's defaults are resolved for it."""
        skip = {"progress", "log_every", "checkpoint_every", "shuffle"} | ({"tf32"} if not self.tf32 else set())
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}  # no tf32: older checkpoints match (the source's identity records the shuffle)
        if cfg is not None:
            out["warmup_steps"], out["decay_fraction"] = self.warmup(cfg), self.decay(cfg)
            out.update(architecture(cfg.arch).resume_identity(cfg))  # JumpReLU's threshold, where it was an option
        return out


def lr_factor(step: int, steps: int, warmup: int, decay_fraction: float) -> float:
    """Warmup (linear from 1/warmup), constant, then linear decay to zero."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    decay_start = steps - int(round(decay_fraction * steps))
    if step >= decay_start and steps > decay_start:
        return max(0.0, (steps - step) / (steps - decay_start))
    return 1.0


@contextmanager
def matmul_precision(tf32: bool) -> Iterator[None]:
    """With ``tf32``, CUDA's fp32 matrix products and convolutions may use TF32 while the
    block runs (``torch.backends.cuda.matmul.allow_tf32``, ``cudnn.allow_tf32``); the
    previous settings come back after it. The CPU's products are unaffected."""
    if not tf32:
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def train_options(config: TrainOptions) -> TrainOptions:
    """The :class:`TrainOptions` part of a config that extends them (``sae train``'s and
    ``sae sweep``'s), as a plain :class:`TrainOptions`."""
    return TrainOptions(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainOptions)})


__all__ = ["TrainOptions", "lr_factor", "train_options", "matmul_precision"]
