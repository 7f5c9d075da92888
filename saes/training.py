"""The SAE trainer, as one import: its options (:mod:`~interlayer.saes.options`), loss
(:mod:`~interlayer.saes.losses`), loop (:mod:`~interlayer.saes.loop`) and checkpoints
(:mod:`~interlayer.saes.checkpoint`). The loss, in the SAE's normalised space::

    L = mean((x_hat - x)^2) + c_sparsity * sparsity_loss + afa_coeff * AFA + auxk_coeff * AuxK

(each term as its architecture registers it; see :mod:`~interlayer.saes.losses`).
"""

from __future__ import annotations

from .checkpoint import (CHECKPOINT, CheckpointMismatchError, NonFiniteError, config_identity, fresh_start,
                         read_checkpoint, save_checkpoint, start)
from .losses import AUTHORS_MAX_GRAD_NORM, DeadMask, afa_target, authors_step, batch_losses, optimizer_step
from .loop import TrainMember, TrainResult, _Member, _postfix, train_sae, train_saes
from .options import TrainOptions, lr_factor

__all__ = ["TrainOptions", "TrainResult", "TrainMember", "train_sae", "train_saes", "batch_losses", "afa_target",
           "lr_factor", "NonFiniteError", "CheckpointMismatchError", "CHECKPOINT", "config_identity", "DeadMask",
           "AUTHORS_MAX_GRAD_NORM", "optimizer_step", "authors_step", "start", "fresh_start", "read_checkpoint",
           "save_checkpoint", "_Member", "_postfix"]
