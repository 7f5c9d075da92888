"""ReLU SAE: ``f = ReLU(pre)``, trained with an L1 penalty (the standard SAE)::

    L_sparsity = l1_coeff * mean_b sum_i f_bi      (decoder rows have unit norm)
"""

from __future__ import annotations

import torch

from .base import Activation, Architecture, Code, EncodeContext, dense_code, register


class ReLU(Activation):
    name = "relu"

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        return torch.relu(pre)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        # Only the nonzero entries are decoded: ReLU passes no gradient where f = 0 anyway.
        # (JumpReLU keeps the dense decode: its threshold's pseudo-gradient reads dL/df at
        # entries just below the threshold, where f = 0.)
        return dense_code(torch.relu(pre))

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return f.abs().sum(-1).mean()  # decoder rows have unit norm, so this is sum_i f_i ||W_dec,i||


ARCHITECTURE = register(Architecture("relu", lambda cfg: ReLU(), sparsity_coefficient="l1_coeff", swept="l1_coeff",
                                     swept_name="the L1 coefficient"))
