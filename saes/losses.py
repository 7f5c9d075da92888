"""The SAE trainer's loss and its optimizer step, for a batch of ``B`` tokens in the SAE's
normalised space::

    L = mean((x_hat - x)^2)                              reconstruction (mean over B and d_in)
      + c_sparsity * sparsity_loss(pre, f)               the architecture's own term, e.g.
                                                         l1_coeff * mean_b sum_i f_bi (relu) or
                                                         l0_coeff * mean_b sum_i H(pre_bi - theta_i) (jumprelu)
      + afa_coeff * mean_b (||f_b|| - A_b)^2             AFA loss (Lee et al. 2025)
      + auxk_coeff * mean((e_hat - e)^2)                 AuxK on dead latents (Gao et al. 2024)

where ``e = x - x_hat`` (detached) and ``e_hat`` decodes the ``aux_k`` largest
pre-activations among the latents that have not fired for ``dead_after`` batches.
Which terms an architecture trains with, and the weight of its sparsity term, are its
registered :class:`~interlayer.saes.archs.Architecture`'s (``sparsity_coefficient``,
``afa_coefficient``, ``uses_auxk``): this module has no per-architecture branch.
The AFA target ``A_b`` is ``||x_b||`` in the authors' form and ``||x_b - b_dec||`` in the
centred form (``b_dec`` detached there).
"""

from __future__ import annotations

from typing import Callable, Union

import torch

from interlayer.distributed import average_gradients

from . import fused_encoder as fused
from .archs import EncodeContext, architecture
from .normalization import normalize
from .options import TrainOptions
from .sae import SAE


DeadMask = Union[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]

AUTHORS_MAX_GRAD_NORM = 100_000.0
"""The authors' ``max_grad_norm`` (their gradient clipping; it practically never bites)."""


def afa_target(sae: SAE, x_in: torch.Tensor) -> torch.Tensor:
    """``A_b`` of the AFA loss for normalised inputs ``x_in``: ``||x||`` in the authors'
    form, ``||x - b_dec||`` (``b_dec`` detached) in the centred form."""
    if sae.cfg.afa_form == "centred":
        return (x_in - sae.b_dec.detach()).norm(dim=-1)
    return x_in.norm(dim=-1)


def batch_losses(sae: SAE, x: torch.Tensor, options: TrainOptions, dead: DeadMask,
                 sync: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Every loss term and the batch statistics, as the trainer computes them.

    ``dead`` is the ``[h]`` mask of dead latents, or (the authors-exact mode) a function
    that takes this batch's ``[h]`` fired mask, updates the counters and returns the mask.
    ``sync`` (data-parallel training) makes the fired mask the ranks' union, so every
    rank keeps the same dead-latent counters.

    TopK, BatchTopK and (fast) top-AFA run the sparse step of
    :mod:`~interlayer.saes.fused_encoder`: the same terms and gradients, without a dense
    code, ``dL/dpre`` or host sync (top-AFA: one, sizing its code). The others, and the
    authors-exact mode, run the dense forward of :class:`~interlayer.saes.SAE`."""
    if sae.activation.sparse_step(sae.d_sae) and not sae.cfg.authors_exact:
        terms = sparse_losses(sae, x, options, dead, sync)
        if terms is not None:
            return terms
    out = sae(x)
    mse = (out.x_hat_in - out.x_in).square().mean()
    loss = mse
    terms = {"mse": mse}
    spec = architecture(sae.cfg.arch)
    with torch.no_grad():
        fired = (out.f > 0).any(0)
        if sync is not None:
            fired = sync(fired)
    if callable(dead):
        dead = dead(fired)
    sparsity = sae.activation.sparsity_loss(out.pre, out.f)
    if sparsity is not None:
        coeff = options.sparsity(spec.name)
        terms["sparsity"] = sparsity
        loss = loss + coeff * sparsity
    afa_coeff = options.afa(spec.name)
    if afa_coeff:
        terms["afa"] = (out.f.norm(dim=-1) - afa_target(sae, out.x_in)).square().mean()
        loss = loss + afa_coeff * terms["afa"]
    if spec.uses_auxk and options.auxk_coeff and bool(dead.any()):
        residual = out.x_in - out.x_hat_in
        if not sae.cfg.authors_exact:  # the authors' code lets the AuxK loss move the main reconstruction too
            residual = residual.detach()
        dead_pre = torch.relu(out.pre[:, dead])
        values, indices = dead_pre.topk(min(options.aux_k, dead_pre.shape[-1]), dim=-1, sorted=False)
        aux_hat = torch.zeros_like(dead_pre).scatter(-1, indices, values) @ sae.W_dec[dead]
        terms["auxk"] = (aux_hat - residual).square().mean()
        loss = loss + options.auxk_coeff * terms["auxk"]
    elif spec.uses_auxk and options.auxk_coeff:  # the sparse step's terms, so ranks on either path agree
        terms["auxk"] = mse.new_zeros(())
    terms["loss"] = loss
    with torch.no_grad():
        err, norm = (out.x_hat_in - out.x_in).square().sum(), out.x_in.square().sum()
        terms["nmse"] = err / norm.clamp_min(1e-12)
        terms["_nmse_parts"] = torch.stack([err, norm])  # summed over ranks in data-parallel training
        terms["l0"] = (out.f > 0).sum(-1).float().mean()
        terms["fired"] = fired
    return terms


def sparse_losses(sae: SAE, x: torch.Tensor, options: TrainOptions, dead: DeadMask,
                  sync: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
    """:func:`batch_losses` by the sparse step (``None`` when the activation finds this
    batch's code too dense for it: the caller then runs the dense one). ``fired`` and L0
    come from the entries; AuxK reads the dead latents' entries (or dense column block)."""
    sae.check_input(x)
    x_in, _ = normalize(x.to(sae.W_enc.dtype), sae.cfg.normalization, sae.cfg.scale)
    n, spec = x_in.shape[0], architecture(sae.cfg.arch)
    pre = fused.pre_activations(x_in, sae.W_enc, sae.b_enc, sae.b_dec)
    with torch.no_grad():
        chosen = sae.activation.select(pre, EncodeContext(x_in - sae.b_dec, decoder=sae.W_dec))
        if chosen is None:
            return None
        fired = fused.fired(chosen, pre[chosen.rows, chosen.cols], sae.d_sae)
        if sync is not None:
            fired = sync(fired)
    if callable(dead):
        dead = dead(fired)
    aux = fused.dead_entries(pre, dead, options.aux_k) if spec.uses_auxk and options.auxk_coeff else None
    entries, csr = chosen, None
    if aux is not None and aux.entries is not None:  # one sparse backward for both sets of entries
        entries, csr = fused.Entries(*(torch.cat([a, b]) for a, b in zip(chosen[:2], aux.entries[:2])),
                                     chosen.starts[:0]), False
    values, block = fused.encode_entries(x_in, sae.W_enc, sae.b_enc, sae.b_dec, pre, entries,
                                         aux.block if aux is not None else None, csr)
    main = chosen.rows.numel()
    acts = torch.relu(values[:main])
    x_hat_in = fused.decode_entries(sae.W_dec, sae.b_dec, chosen, acts, n)
    mse = (x_hat_in - x_in).square().mean()
    loss, terms = mse, {"mse": mse}
    afa_coeff = options.afa(spec.name)
    if afa_coeff:
        terms["afa"] = (fused.row_norms(chosen, acts, n) - afa_target(sae, x_in)).square().mean()
        loss = loss + afa_coeff * terms["afa"]
    if aux is not None:
        aux_hat = fused.aux_reconstruction(sae.W_dec, aux, values[main:], block, dead, options.aux_k)
        terms["auxk"] = aux.any_dead * (aux_hat - (x_in - x_hat_in).detach()).square().mean()
        loss = loss + options.auxk_coeff * terms["auxk"]
    terms["loss"] = loss
    with torch.no_grad():
        err, norm = (x_hat_in - x_in).square().sum(), x_in.square().sum()
        terms["nmse"] = err / norm.clamp_min(1e-12)
        terms["_nmse_parts"] = torch.stack([err, norm])
        terms["l0"] = (acts > 0).sum().float() / n
        terms["fired"] = fired
    return terms


def optimizer_step(sae: SAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                    average: bool = False) -> None:
    """One Adam step with the decoder rows kept at unit norm (gradient projected, rows
    renormalised); ``average``: the gradient is first averaged over the ranks."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average:
        average_gradients(list(sae.parameters()))
    sae.constrain_decoder(grad_only=True)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    sae.constrain_decoder()


def authors_step(sae: SAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, lr: float,
                  average: bool = False) -> None:
    """The authors' step: clip the gradient norm at 100,000, project the decoder's gradient
    and renormalise its rows, then the Adam step (rows leave unit norm by it)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if average:
        average_gradients(list(sae.parameters()))
    torch.nn.utils.clip_grad_norm_(sae.parameters(), AUTHORS_MAX_GRAD_NORM)
    sae.constrain_decoder(grad_only=True)
    sae.constrain_decoder()
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()


__all__ = ["batch_losses", "sparse_losses", "afa_target", "DeadMask", "AUTHORS_MAX_GRAD_NORM", "optimizer_step", "authors_step"]
