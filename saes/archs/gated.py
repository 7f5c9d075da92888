"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse
Autoencoders"), as dictionary_learning's ``GatedAutoEncoder`` computes it: one encoder
matrix shared by a gate and a magnitude path,

    x_enc = (x - b_dec) W_enc,   pi_gate = x_enc + b_gate,   pi_mag = exp(r_mag) * x_enc + b_mag
    f = 1[pi_gate > 0] * ReLU(pi_mag)

The SAE's ``b_enc`` is the gate bias, so ``pre = pi_gate``, and the magnitude path is
``exp(r_mag) * (pre - b_gate) + b_mag = exp(r_mag) * pre + (b_mag - exp(r_mag) * b_gate)``.
This activation holds ``r_mag`` and that last bias, ``b_mag_pre`` (the magnitude bias in
terms of ``pre``; :func:`gated_state` converts a file's ``mag_bias``), so it needs nothing
of the encoder but ``pre``.

Loaded and evaluated, not trained: interlayer has no Gated trainer (its auxiliary loss
through a frozen decoder copy), so training one is refused (``trainable=False``).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Activation, Architecture, Code, EncodeContext, dense_code, register


class Gated(Activation):
    name = "gated"

    def __init__(self, d_sae: int) -> None:
        super().__init__()
        self.r_mag = nn.Parameter(torch.zeros(d_sae))
        self.b_mag_pre = nn.Parameter(torch.zeros(d_sae))

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        magnitude = torch.relu(self.r_mag.exp() * pre + self.b_mag_pre)
        return magnitude * (pre > 0).to(pre.dtype)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        return dense_code(self.forward(pre, context))


def gated_state(r_mag: torch.Tensor, mag_bias: torch.Tensor, gate_bias: torch.Tensor) -> dict[str, torch.Tensor]:
    """The activation's state (``activation.r_mag``, ``activation.b_mag_pre``) of a Gated SAE
    with magnitude scale ``r_mag``, magnitude bias ``mag_bias`` and gate bias ``gate_bias``
    (the SAE's ``b_enc``), as dictionary_learning's ``GatedAutoEncoder`` stores them."""
    r_mag = r_mag.double()
    b_mag_pre = mag_bias.double() - r_mag.exp() * gate_bias.double()
    return {"activation.r_mag": r_mag.float(), "activation.b_mag_pre": b_mag_pre.float()}


ARCHITECTURE = register(Architecture("gated", lambda cfg: Gated(cfg.d_sae), latent_parameters=2, trainable=False))
