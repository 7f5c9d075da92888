"""What every SAE architecture shares: the sparse :class:`Code`, the :class:`Activation`
module interface, and the :class:`Architecture` record each ``saes/archs/<name>.py``
registers (:func:`register`), so the SAE, the trainer and the sweep hold no
per-architecture branches.

An activation maps the encoder's pre-activations ``pre = (x - b_dec) W_enc + b_enc`` to
the sparse code ``f``; every architecture shares the encoder, the decoder
``x_hat = f W_dec + b_dec`` and the trainer: only this step, its sparsity loss and its
loss coefficients differ.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from interlayer.errors import InterlayerError, choices

from ..fused_encoder import Entries

class ArchConfig(Protocol):
    """What an architecture reads of an :class:`~interlayer.saes.SAEConfig` (declared here
    so that the architectures need not import the SAE module that builds them)."""

    arch: str
    d_sae: int | None
    k: int | None
    afa_form: str | None
    authors_exact: bool
    jumprelu_init_threshold: float
    jumprelu_bandwidth: float


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


class EncodeContext:
    """What some activations need besides the pre-activations: the centred input's
    norm (top-AFA's target) and the decoder row norms (given, or computed from
    ``decoder`` when first read)."""

    def __init__(self, centred: torch.Tensor, decoder_norms: torch.Tensor | None = None,
                 decoder: torch.Tensor | None = None) -> None:
        self.centred = centred
        self._norms = decoder_norms
        self._decoder = decoder

    @property
    def decoder_norms(self) -> torch.Tensor:
        """``[h]`` the decoder row norms ``||W_dec,i||``."""
        if self._norms is None:
            self._norms = self._decoder.norm(dim=-1)
        return self._norms


class Activation(nn.Module, abc.ABC):
    """Base class: ``forward(pre, context)`` returns the sparse code ``f``;
    :meth:`encode` returns it as a :class:`Code` (with its nonzero entries where known)."""

    name = "base"
    distributed = False
    """Set by the trainer in data-parallel training: a batch-wide selection (BatchTopK)
    then spans the ranks' parts of the global batch."""

    @abc.abstractmethod
    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        """The sparse code of the pre-activations ``pre``."""

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        """``[B, h]`` pre-activations to a :class:`Code` (dense only, unless overridden)."""
        return Code(self.forward(pre, context))

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor | None:
        """The architecture's own sparsity penalty (unweighted), or ``None``."""
        return None

    def sparse_step(self, d_sae: int) -> bool:
        """Whether the training step may run sparse (:mod:`interlayer.saes.fused_encoder`):
        the code's entries come from :meth:`select` and no dense ``f`` is built. Only an
        activation without a :meth:`sparsity_loss` and whose gradient reaches ``pre`` at the
        kept entries alone may say yes."""
        return False

    def select(self, pre: torch.Tensor, context: EncodeContext) -> Entries | None:
        """Training, without gradients: the entries of the code of ``[B, h]`` pre-activations
        (row-major), or ``None`` when the code turns out too dense to train sparsely (the
        step then runs the dense path)."""
        return None


@dataclass
class ArchFields:
    """The fields of :class:`ArchConfig` alone: what an architecture's check reads, for
    checking options before an SAE's width is known (:func:`~interlayer.saes.sae.check_sae_fields`)."""

    arch: str
    d_sae: int | None = None
    k: int | None = None
    afa_form: str | None = None
    authors_exact: bool = False
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001


def no_afa_fields(cfg: ArchConfig) -> None:
    """The config check of every architecture but top-AFA: its fields are not set."""
    if cfg.afa_form is not None or cfg.authors_exact:
        raise InterlayerError(f"afa_form and authors_exact are options of the 'topafa' architecture, not "
                              f"{cfg.arch!r} (got afa_form={cfg.afa_form!r}, authors_exact={cfg.authors_exact})")


def no_identity(cfg: ArchConfig) -> dict[str, Any]:
    """No entries: the options identity of most architectures."""
    return {}


@dataclass(frozen=True)
class Architecture:
    """One SAE architecture, as its module registers it: how to build its activation,
    its config defaults, which loss terms it trains with and how a sweep varies it."""

    name: str
    """The ``--arch`` name."""
    activation: Callable[[ArchConfig], Activation]
    """The activation module of an SAE of this config."""
    default_k: int | None = None
    """Not ``None``: the architecture takes ``k`` (latents per token), this by default."""
    sparsity_coefficient: str | None = None
    """The :class:`~interlayer.saes.options.TrainOptions` field weighting the activation's
    :meth:`~Activation.sparsity_loss` (``l1_coeff``, ``l0_coeff``)."""
    afa_coefficient: float = 0.0
    """The AFA loss's weight when ``TrainOptions.afa_coeff`` is not given (top-AFA: 1/32)."""
    uses_auxk: bool = False
    """Whether the AuxK loss on dead latents (Gao et al. 2024) trains it."""
    swept: str | None = None
    """What a sweep's grid value sets: ``"k"`` or a ``TrainOptions`` field."""
    swept_name: str = ""
    """That value in words, for error messages (e.g. ``"the L1 coefficient"``)."""
    latent_parameters: int = 0
    """Parameters per latent besides ``b_enc`` and the weights (JumpReLU's threshold: 1)."""
    check: Callable[[ArchConfig], None] = no_afa_fields
    """Checks (and completes) an :class:`~interlayer.saes.SAEConfig` of this architecture."""
    resume_identity: Callable[[ArchConfig], dict[str, Any]] = no_identity
    """Entries a resumed run's options identity adds for this architecture (JumpReLU's
    initial threshold, under the name it had as a training option, so older checkpoints match)."""
    trainable: bool = True
    """Whether interlayer trains it (``False``: loaded and evaluated only, e.g. a Gated SAE read from another library)."""

    @property
    def takes_k(self) -> bool:
        return self.default_k is not None


REGISTRY: dict[str, Architecture] = {}
"""The registered architectures, by name (in registration order)."""


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to :data:`REGISTRY` (an architecture module calls this once)."""
    REGISTRY[arch.name] = arch
    return arch


def architecture(name: str) -> Architecture:
    """The registered architecture ``name``."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise InterlayerError(f"unknown SAE architecture {name!r}; valid choices: {choices(list(REGISTRY))}") from None
