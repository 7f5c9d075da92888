"""BatchTopK SAE (Bussmann et al. 2024): the ``k * B`` largest of ``ReLU(pre)`` over a batch
of ``B`` tokens while training; at inference a single threshold ``theta``, the running
mean of the smallest kept activation, so ``f = pre * (pre > theta)``. Trained with AuxK."""

from __future__ import annotations

import math

import torch

from interlayer.distributed import all_gather_cat, all_reduce, current

from ..fused_encoder import Entries, flat_entries
from .base import SPARSE_DENSITY, Activation, Architecture, Code, EncodeContext, coo_code, dense_code, register
from .topk import DEFAULT_K


class BatchTopK(Activation):
    name = "batchtopk"

    def __init__(self, k: int, threshold_momentum: float = 0.01) -> None:
        super().__init__()
        self.k = int(k)
        self.threshold_momentum = threshold_momentum
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        return self.encode(pre, context).f

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        acts = torch.relu(pre)
        if not self.training:
            if float(self.threshold) < 0:
                raise RuntimeError("this BatchTopK SAE has no inference threshold yet: train it first")
            return dense_code(acts * (acts > self.threshold))
        flat = acts.flatten()
        if self.distributed:
            values, indices = self._global_top(flat, pre.shape[0])
        else:
            values, indices = flat.topk(min(self.k * pre.shape[0], flat.numel()), sorted=False)
        f = torch.zeros_like(flat).scatter(-1, indices, values).view_as(pre)
        self._update_threshold(values)
        h = pre.shape[-1]
        return coo_code(f, torch.div(indices, h, rounding_mode="floor"), indices % h, values)

    @torch.no_grad()
    def _update_threshold(self, values: torch.Tensor) -> None:
        """Move the inference threshold towards the smallest positive kept activation (set
        it on the first batch), on the device: no host sync."""
        least = torch.where(values > 0, values, torch.full_like(values, math.inf)).amin()
        if self.distributed:
            least = all_reduce(least.clone(), "min", "the BatchTopK threshold")
        moved = torch.where(self.threshold < 0, least, torch.lerp(self.threshold, least, self.threshold_momentum))
        self.threshold.copy_(torch.where(torch.isfinite(least), moved, self.threshold))

    def sparse_step(self, d_sae: int) -> bool:
        """Sparse training (the batch-wide selection's entries) while ``k`` is a small share of the latents."""
        return self.training and self.k <= SPARSE_DENSITY * d_sae

    def select(self, pre: torch.Tensor, context: EncodeContext) -> Entries | None:
        """The ``k x B`` largest pre-activations of the batch (``ReLU(pre)``'s, as :meth:`encode`),
        moving the inference threshold as :meth:`encode` does; ``None`` above :data:`SPARSE_DENSITY`."""
        if not self.sparse_step(pre.shape[-1]):
            return None
        acts = torch.relu(pre).flatten()
        if self.distributed:
            values, indices = self._global_top(acts, pre.shape[0])
        else:
            values, indices = acts.topk(min(self.k * pre.shape[0], acts.numel()), sorted=False)
        self._update_threshold(values)
        return flat_entries(indices, pre.shape[-1])

    def _global_top(self, flat: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's entries among the top ``k x global batch`` of all ranks' batches
        (data-parallel training): every rank offers its own largest ``k x global batch``
        values, and the threshold is the smallest of the global top ones, so the selection
        is the one a single process makes on the whole batch (ties aside)."""
        wanted = self.k * rows * current().size
        with torch.no_grad():
            offered = flat.topk(min(wanted, flat.numel()), sorted=False).values
            pool = all_gather_cat(offered, "the BatchTopK selection")
            cut = pool.topk(min(wanted, pool.numel()), sorted=False).values.min()
        indices = ((flat >= cut) & (flat > 0)).nonzero(as_tuple=True)[0]
        return flat[indices], indices


ARCHITECTURE = register(Architecture("batchtopk", lambda cfg: BatchTopK(cfg.k), default_k=DEFAULT_K, uses_auxk=True,
                                     swept="k"))
