"""The pluggable activation functions of :class:`interlayer.saes.SAE`.

Each maps the encoder's pre-activations ``pre = (x - b_dec) W_enc + b_enc`` to the
sparse code ``f``. Every architecture shares the encoder, the decoder
``x_hat = f W_dec + b_dec`` and the trainer; only this step and its sparsity loss differ.

* ``relu``: ``f = ReLU(pre)``, with an L1 penalty (the standard SAE).
* ``topk``: the ``k`` largest of ``ReLU(pre)`` per token (Gao et al. 2024).
* ``batchtopk``: the ``k * B`` largest over a batch of ``B`` tokens while training
  (Bussmann et al. 2024); at inference a single threshold ``theta``, the running mean of
  the smallest kept activation, so ``f = pre * (pre > theta)``.
* ``jumprelu``: ``f = pre * H(pre - theta_i)`` with learned per-latent thresholds and an
  L0 penalty trained through straight-through estimators with a rectangle kernel
  (Rajamanoharan et al. 2024).
* ``topafa``: per token, as many latents as bring ``||f||`` closest to ``||x - b_dec||``
  (Lee et al. 2025; see :mod:`interlayer.saes.topafa`).
"""

from __future__ import annotations

import abc
import math
from typing import Any, NamedTuple

import torch
from torch import nn

from interlayer.distributed import all_reduce

from . import topafa

SAE_ARCHITECTURES = ("relu", "topk", "batchtopk", "jumprelu", "topafa")
"""The SAE architectures, by ``--arch`` name."""
AFA_FORMS = ("centred", "authors")
"""The forms of top-AFA's AFA loss (:attr:`interlayer.saes.SAEConfig.afa_form`)."""


class Code(NamedTuple):
    """A sparse code: dense ``f``, and, where the activation knows them, its nonzero
    entries in COO form sorted by token (``cols`` and ``values`` of the tokens' bags,
    ``offsets`` where each token's bag starts), so the decoder can gather ``W_dec`` rows
    instead of multiplying by the mostly-zero ``f``. ``values`` carry the gradient."""

    f: torch.Tensor
    cols: torch.Tensor | None = None
    values: torch.Tensor | None = None
    offsets: torch.Tensor | None = None

    @property
    def sparse(self) -> bool:
        return self.cols is not None


SPARSE_DENSITY = 0.03
"""Above this fraction of nonzero entries a code is decoded densely: measured on this
project's CPU (B = 1,024, h = 5,120, d = 640, forward and backward), gathering the
decoder rows (``embedding_bag``) takes 0.16x the dense product's time at 0.5% nonzero,
0.43x at 2%, 1.6x at 10% and 6.4x at 30%."""


def coo_code(f: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor) -> Code:
    """A :class:`Code` from unsorted ``(row, col, value)`` entries of the ``[B, h]`` code ``f``
    (dense only when they are more than :data:`SPARSE_DENSITY` of it)."""
    if rows.numel() > SPARSE_DENSITY * f.numel():
        return Code(f)
    order = torch.argsort(rows, stable=True)
    counts = torch.bincount(rows, minlength=f.shape[0])
    offsets = torch.zeros_like(counts)
    offsets[1:] = counts.cumsum(0)[:-1]
    return Code(f, cols[order], values[order], offsets)


def dense_code(f: torch.Tensor, max_density: float = SPARSE_DENSITY) -> Code:
    """A :class:`Code` of a ``[B, h]`` code with its nonzero entries, unless more than
    ``max_density`` of it is nonzero (a dense decode is then faster)."""
    with torch.no_grad():
        nnz = int(torch.count_nonzero(f))
    if nnz > max_density * f.numel():
        return Code(f)
    rows, cols = f.nonzero(as_tuple=True)  # row-major: already sorted by token
    counts = torch.bincount(rows, minlength=f.shape[0])
    offsets = torch.zeros_like(counts)
    offsets[1:] = counts.cumsum(0)[:-1]
    return Code(f, cols, f[rows, cols], offsets)


class Activation(nn.Module, abc.ABC):
    """Base class: ``forward(pre, context)`` returns the sparse code ``f``;
    :meth:`encode` returns it as a :class:`Code` (with its nonzero entries where known)."""

    name = "base"
    distributed = False
    """Set by the trainer in data-parallel training: a batch-wide selection (BatchTopK)
    then spans the ranks' parts of the global batch."""

    @abc.abstractmethod
    def forward(self, pre: torch.Tensor, context: "EncodeContext") -> torch.Tensor:
        """The sparse code of the pre-activations ``pre``."""

    def encode(self, pre: torch.Tensor, context: "EncodeContext") -> Code:
        """``[B, h]`` pre-activations to a :class:`Code` (dense only, unless overridden)."""
        return Code(self.forward(pre, context))

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor | None:
        """The architecture's own sparsity penalty (unweighted), or ``None``."""
        return None


class EncodeContext:
    """What some activations need besides the pre-activations: the centred input's
    norm (top-AFA's target) and the decoder row norms."""

    def __init__(self, centred: torch.Tensor, decoder_norms: torch.Tensor) -> None:
        self.centred = centred
        self.decoder_norms = decoder_norms


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
        with torch.no_grad():
            positive = values[values > 0]
            least = positive.min() if positive.numel() else torch.tensor(math.inf, device=values.device)
            if self.distributed:
                least = all_reduce(least.clone(), "min", "the BatchTopK threshold")
            if torch.isfinite(least):
                smallest = least
                if float(self.threshold) < 0:
                    self.threshold.copy_(smallest)
                else:
                    self.threshold.lerp_(smallest, self.threshold_momentum)
        h = pre.shape[-1]
        return coo_code(f, torch.div(indices, h, rounding_mode="floor"), indices % h, values)

    def _global_top(self, flat: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's entries among the top ``k x global batch`` of all ranks' batches
        (data-parallel training): every rank offers its own largest ``k x global batch``
        values, and the threshold is the smallest of the global top ones, so the selection
        is the one a single process makes on the whole batch (ties aside)."""
        from interlayer.distributed import all_gather_cat, current

        wanted = self.k * rows * current().size
        with torch.no_grad():
            offered = flat.topk(min(wanted, flat.numel()), sorted=False).values
            pool = all_gather_cat(offered, "the BatchTopK selection")
            cut = pool.topk(min(wanted, pool.numel()), sorted=False).values.min()
        indices = ((flat >= cut) & (flat > 0)).nonzero(as_tuple=True)[0]
        return flat[indices], indices


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

    def __init__(self, d_sae: int, initial_threshold: float = 0.001, bandwidth: float = 0.001) -> None:
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


def candidates_for(k: torch.Tensor) -> int:
    """A first candidate-set size for top-AFA selection given the k of a previous batch:
    the 90th percentile rounded up to a power of two, so most tokens settle in the first
    ``topk`` and the rest in a second one on their rows only."""
    q = float(torch.quantile(k.float(), 0.9)) if k.numel() > 1 else float(k.max())
    return 1 << max(4, int(q).bit_length())


class TopAFA(Activation):
    name = "topafa"

    def __init__(self, fast: bool = True, sentinel: bool = False) -> None:
        super().__init__()
        self.fast = fast
        self.sentinel = sentinel  # the authors' C_h = 1e8: k = h excluded
        self.candidates = 64  # adapts to the k the data need; affects speed only

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        lead, h = pre.shape[:-1], pre.shape[-1]
        return self.encode(pre.reshape(-1, h), context).f.reshape(*lead, h)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        with torch.no_grad():
            target = context.centred.reshape(-1, context.centred.shape[-1]).norm(dim=-1)
        if self.fast:
            f, k, (rows, cols, values) = topafa.encode(pre, context.decoder_norms.detach(), target, self.candidates,
                                                       sentinel=self.sentinel, entries=True)
            if k.numel():
                self.candidates = candidates_for(k)
            return coo_code(f, rows, cols, values)
        acts = torch.relu(pre)
        with torch.no_grad():
            chosen = topafa.select_sorted((acts * context.decoder_norms).square(), target, sentinel=self.sentinel)
        return Code(acts * chosen.keep)


def make_activation(arch: str, d_sae: int, k: int | None, **options: Any) -> Activation:
    """The activation module of architecture ``arch``."""
    if arch == "relu":
        return ReLU()
    if arch == "topk":
        return TopK(k)
    if arch == "batchtopk":
        return BatchTopK(k)
    if arch == "jumprelu":
        return JumpReLU(d_sae, options.get("jumprelu_init_threshold", 0.001), options.get("jumprelu_bandwidth", 0.001))
    if arch == "topafa":
        # The authors-exact mode runs their full sort and dense decode, so it matches their code bit for bit.
        exact = bool(options.get("sentinel", False))
        return TopAFA(fast=not exact, sentinel=exact)
    raise ValueError(arch)
