"""TopK SAE (Gao et al. 2024): the ``k`` largest of ``ReLU(pre)`` per token, trained with
the AuxK loss on dead latents."""

from __future__ import annotations

import torch

from ..fused_encoder import Entries, fixed_entries
from .base import SPARSE_DENSITY, Activation, Architecture, Code, EncodeContext, register

DEFAULT_K = 32
"""The default k of the TopK and BatchTopK architectures (the README's best TopK member)."""


class TopK(Activation):
    name = "topk"

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = int(k)

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        values, indices = torch.relu(pre).topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        values, indices = torch.relu(pre).topk(self.k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter(-1, indices, values)
        if self.k > SPARSE_DENSITY * pre.shape[-1]:
            return Code(f)
        offsets = torch.arange(0, pre.shape[0] * self.k, self.k, device=pre.device)
        return Code(f, indices.reshape(-1), values.reshape(-1), offsets)

    def sparse_step(self, d_sae: int) -> bool:
        """Sparse training while ``k`` is at most :data:`SPARSE_DENSITY` of the latents (the decode's rule)."""
        return self.k <= SPARSE_DENSITY * d_sae

    def select(self, pre: torch.Tensor, context: EncodeContext) -> Entries | None:
        """The ``k`` largest pre-activations per token (those of ``ReLU(pre)`` wherever ``k``
        are positive; the others have ``f = 0`` either way), or ``None`` above
        :data:`SPARSE_DENSITY`."""
        if not self.sparse_step(pre.shape[-1]):
            return None
        return fixed_entries(pre.topk(self.k, dim=-1, sorted=False).indices)


ARCHITECTURE = register(Architecture("topk", lambda cfg: TopK(cfg.k), default_k=DEFAULT_K, uses_auxk=True, swept="k"))
