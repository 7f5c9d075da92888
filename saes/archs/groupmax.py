"""GroupMax SAE (EleutherAI/sparsify's ``activation="groupmax"``): the latents split into
``k`` contiguous groups of ``d_sae / k``, and each group keeps only its largest
``ReLU(pre)``, so exactly ``k`` latents per token are candidates (some may be 0).
Read from sparsify checkpoints; trained like TopK (AuxK on dead latents)."""

from __future__ import annotations

import torch

from interlayer.errors import InterlayerError

from .base import SPARSE_DENSITY, Activation, ArchConfig, Architecture, Code, EncodeContext, no_afa_fields, register
from .topk import DEFAULT_K


class GroupMax(Activation):
    """The max of ``ReLU(pre)`` in each of ``k`` equal groups of latents."""

    name = "groupmax"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def _select(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, indices = torch.relu(pre).unflatten(-1, (self.k, -1)).max(dim=-1)
        group = pre.shape[-1] // self.k
        return values, indices + torch.arange(0, pre.shape[-1], group, device=pre.device)

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        values, indices = self._select(pre)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        values, indices = self._select(pre)
        f = torch.zeros_like(pre).scatter(-1, indices, values)
        if self.k > SPARSE_DENSITY * pre.shape[-1]:
            return Code(f)
        offsets = torch.arange(0, pre.shape[0] * self.k, self.k, device=pre.device)
        return Code(f, indices.reshape(-1), values.reshape(-1), offsets)


def check(cfg: ArchConfig) -> None:
    """A GroupMax config needs ``d_sae`` divisible by ``k`` (equal groups)."""
    no_afa_fields(cfg)
    if cfg.d_sae is not None and cfg.k and cfg.d_sae % cfg.k:
        raise InterlayerError(f"groupmax needs d_sae divisible by k (k equal groups), got d_sae={cfg.d_sae}, k={cfg.k}")


ARCHITECTURE = register(Architecture("groupmax", lambda cfg: GroupMax(cfg.k), default_k=DEFAULT_K, uses_auxk=True,
                                     swept="k", check=check))
