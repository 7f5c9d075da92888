"""JumpReLU SAE (Rajamanoharan et al. 2024): ``f = pre * H(pre - theta_i)`` with learned
per-latent thresholds ``theta = exp(log_threshold)``, trained with an L0 penalty through
straight-through estimators with a rectangle kernel::

    L_sparsity = l0_coeff * mean_b sum_i H(pre_bi - theta_i)

The initial threshold is :attr:`~interlayer.saes.SAEConfig.jumprelu_init_threshold`
(``--jumprelu-threshold``; the paper's 0.001 by default): ``log(theta)`` moves about
``lr`` per step, so in short runs it sets the L0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Activation, Architecture, Code, EncodeContext, dense_code, register

INITIAL_THRESHOLD = 0.001
"""The default initial threshold (Rajamanoharan et al. 2024)."""
BANDWIDTH = 0.001
"""The default width of the straight-through rectangle kernel."""


class _ThresholdFunction(torch.autograd.Function):
    """``pre * H(pre - theta)`` (``step=False``) or ``H(pre - theta)`` (``step=True``), with
    ``theta = exp(log_threshold)``. The gradient to ``log_threshold`` goes through a
    rectangle kernel ``K`` of width ``bandwidth`` (Rajamanoharan et al. 2024):
    d/d theta of ``pre * H(pre - theta)`` is ``-(theta / bw) K``, of ``H(pre - theta)`` it is
    ``-(1 / bw) K``; times ``d theta / d log theta = theta``. ``pre`` gets ``H(pre - theta)``
    (jump) or nothing (step)."""

    @staticmethod
    def forward(ctx, pre: torch.Tensor, log_threshold: torch.Tensor, bandwidth: float, step: bool) -> torch.Tensor:
        threshold = log_threshold.exp()
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.step = bandwidth, step
        gate = pre > threshold
        return gate.to(pre.dtype) if step else pre * gate

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        in_window = ((pre - threshold).abs() < bw / 2).to(grad.dtype)
        slope = (1.0 / bw) if ctx.step else (threshold / bw)
        grad_log = (-slope * in_window * grad).sum(tuple(range(grad.dim() - 1))) * threshold
        grad_pre = torch.zeros_like(pre) if ctx.step else (pre > threshold).to(grad.dtype) * grad
        return grad_pre, grad_log, None, None


class JumpReLU(Activation):
    name = "jumprelu"

    def __init__(self, d_sae: int, initial_threshold: float = INITIAL_THRESHOLD, bandwidth: float = BANDWIDTH) -> None:
        super().__init__()
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(initial_threshold)))
        self.bandwidth = float(bandwidth)

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        if not torch.is_grad_enabled():
            threshold = self.threshold
            return pre * (pre > threshold)
        return _ThresholdFunction.apply(pre, self.log_threshold, self.bandwidth, False)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        f = self.forward(pre, context)
        # Without gradients (evaluation) only the nonzero entries need decoding; while
        # training the threshold's pseudo-gradient needs dL/df at zero entries too.
        return Code(f) if torch.is_grad_enabled() else dense_code(f)

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return _ThresholdFunction.apply(pre, self.log_threshold, self.bandwidth, True).sum(-1).mean()


ARCHITECTURE = register(Architecture(
    "jumprelu", lambda cfg: JumpReLU(cfg.d_sae, cfg.jumprelu_init_threshold, cfg.jumprelu_bandwidth),
    sparsity_coefficient="l0_coeff", swept="l0_coeff", swept_name="the L0 coefficient", latent_parameters=1,
    resume_identity=lambda cfg: {"jumprelu_threshold": cfg.jumprelu_init_threshold}))
