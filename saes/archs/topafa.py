"""Top-AFA SAE (Lee et al. 2025): per token, as many latents as bring ``||f||`` closest to
``||x - b_dec||`` (the selection is :mod:`interlayer.saes.topafa`), trained with the AFA
loss (weight λ, 1/32 by default) and AuxK::

    L_afa = afa_coeff * mean_b (||f_b|| - A_b)^2

``A_b`` is ``||x_b - b_dec||`` in the ``centred`` form (the default) and ``||x_b||`` in the
``authors`` form; the authors-exact mode runs their code bit for bit.
"""

from __future__ import annotations

import torch

from interlayer.errors import InterlayerError, choices

from .. import topafa as selection
from ..fused_encoder import Entries, counted_entries
from .base import SPARSE_DENSITY, Activation, ArchConfig, Architecture, Code, EncodeContext, coo_code, register

AFA_FORMS = ("centred", "authors")
"""The forms of top-AFA's AFA loss (:attr:`interlayer.saes.SAEConfig.afa_form`)."""


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
        self.dense = False  # the last code was too dense to train sparsely (fresh weights: k ~ 40% of h)

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        lead, h = pre.shape[:-1], pre.shape[-1]
        return self.encode(pre.reshape(-1, h), context).f.reshape(*lead, h)

    def encode(self, pre: torch.Tensor, context: EncodeContext) -> Code:
        with torch.no_grad():
            target = context.centred.reshape(-1, context.centred.shape[-1]).norm(dim=-1)
        if self.fast:
            f, k, (rows, cols, values) = selection.encode(pre, context.decoder_norms.detach(), target, self.candidates,
                                                          sentinel=self.sentinel, entries=True)
            if k.numel():
                self.candidates = candidates_for(k)
            self.dense = rows.numel() > SPARSE_DENSITY * pre.numel()
            return coo_code(f, rows, cols, values)
        acts = torch.relu(pre)
        with torch.no_grad():
            chosen = selection.select_sorted((acts * context.decoder_norms).square(), target, sentinel=self.sentinel)
        return Code(acts * chosen.keep)


    def sparse_step(self, d_sae: int) -> bool:
        """Sparse training in the fast mode while the last code was sparse enough (the
        authors-exact mode keeps their dense code)."""
        return self.fast and not self.dense

    def select(self, pre: torch.Tensor, context: EncodeContext) -> Entries | None:
        """The kept entries of the fast selection, or ``None`` (and the next steps dense
        until a code is sparse again) above :data:`SPARSE_DENSITY`. One host sync per step:
        the number of kept entries sizes the code."""
        target = context.centred.reshape(-1, context.centred.shape[-1]).norm(dim=-1)
        k, cols = kept_entries(pre, context.decoder_norms.detach(), target, self.candidates, self.sentinel)
        if k.numel():
            self.candidates = candidates_for(k)
        self.dense = cols.numel() > SPARSE_DENSITY * pre.numel()
        return None if self.dense else counted_entries(k, cols)


def kept_entries(pre: torch.Tensor, decoder_norms: torch.Tensor, target: torch.Tensor, candidates: int,
                 sentinel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(k, cols)``: how many latents each token keeps and which (row-major), by the fast
    selection of :mod:`interlayer.saes.topafa`."""
    kept = selection.entries(pre.detach() * decoder_norms, target, candidates, sentinel=sentinel)
    return kept.k, kept.cols


def _activation(cfg: ArchConfig) -> TopAFA:
    # The authors-exact mode runs their full sort and dense decode, so it matches their code bit for bit.
    return TopAFA(fast=not cfg.authors_exact, sentinel=cfg.authors_exact)


def _check(cfg: ArchConfig) -> None:
    """The AFA form defaults to ``centred`` (``authors`` in the authors-exact mode, which requires it)."""
    if cfg.afa_form is None:
        cfg.afa_form = "authors" if cfg.authors_exact else "centred"
    if cfg.afa_form not in AFA_FORMS:
        raise InterlayerError(f"unknown AFA form {cfg.afa_form!r}; valid choices: {choices(AFA_FORMS)}")
    if cfg.authors_exact and cfg.afa_form != "authors":
        raise InterlayerError("authors_exact runs the authors' code, whose AFA loss is the 'authors' form; "
                              f"it cannot be combined with afa_form={cfg.afa_form!r}")


ARCHITECTURE = register(Architecture("topafa", _activation, afa_coefficient=1 / 32, uses_auxk=True, swept="afa_coeff",
                                     swept_name="λ (the AFA coefficient)", check=_check))
