"""Reconstruction metrics of an SAE, accumulated over batches of activations (the
formulas are in :mod:`interlayer.saes.evaluation`'s docstring): NMSE, explained
variance, L0, dead and dense latents, the authors' standardised MSE, and per token
ε_LBO in both forms and the norm ratios."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from interlayer.errors import InterlayerError

from .normalization import STD_EPS
from .sae import SAE

DENSE_FREQUENCY = 0.1
"""A latent firing on more than this fraction of the tokens is dense."""


def eps_lbo_form(sae: SAE) -> str:
    """The ε_LBO form that matches how ``sae`` was trained: ``centred`` for a centred
    top-AFA SAE, ``authors`` otherwise."""
    return "centred" if sae.cfg.afa_form == "centred" else "authors"


class Accumulator:
    """Running sums of the reconstruction metrics and the per-token diagnostics."""

    def __init__(self, sae: SAE) -> None:
        self.sae = sae
        self.form = eps_lbo_form(sae)
        self.sq_std = 0.0
        self.n = 0
        self.err = 0.0
        self.sq = 0.0
        self.err_in = 0.0
        self.sq_in = 0.0
        self.sum_x: torch.Tensor | None = None
        self.l0 = 0.0
        self.fires = torch.zeros(sae.d_sae, dtype=torch.long)
        self.tokens: dict[str, list[np.ndarray]] = {"norm_z": [], "norm_f_tilde": [], "norm_f": [], "norm_x": [],
                                                    "norm_x_centred": [], "eps_lbo": [], "eps_lbo_authors": [],
                                                    "eps_lbo_centred": [], "l0": []}

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        sae = self.sae
        x = x.reshape(-1, x.shape[-1]).to(sae.device, sae.W_enc.dtype)
        out = sae(x)
        diff = (x - out.x_hat).double()
        self.err += float(diff.square().sum())
        self.sq += float(x.double().square().sum())
        self.err_in += float((out.x_in - out.x_hat_in).double().square().sum())
        self.sq_in += float(out.x_in.double().square().sum())
        s = x.double().sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        active = out.f > 0
        self.l0 += float(active.sum())
        self.fires += active.sum(0).cpu()
        self.n += x.shape[0]
        xd = x.double()
        std = (xd - xd.mean(-1, keepdim=True)).std(-1, keepdim=True)
        self.sq_std += float((diff / (std + STD_EPS)).square().sum())
        dec_norms = sae.W_dec.norm(dim=-1)
        coded_sq = (out.f * dec_norms).double().square().sum(-1)
        forms = {"authors": (out.x_in.double().square().sum(-1), coded_sq + float(sae.b_dec.double().norm()) ** 2),
                 "centred": ((out.x_in - sae.b_dec).double().square().sum(-1), coded_sq)}
        for name, (z_sq, f_tilde_sq) in forms.items():
            eps = (z_sq - f_tilde_sq).abs() / ((sae.d_sae - 1) * f_tilde_sq.clamp_min(1e-30))
            self.tokens[f"eps_lbo_{name}"].append(eps.cpu().numpy())
        z_sq, f_tilde_sq = forms[self.form]
        self.tokens["eps_lbo"].append(self.tokens[f"eps_lbo_{self.form}"][-1])
        self.tokens["norm_z"].append(z_sq.sqrt().cpu().numpy())
        self.tokens["norm_f_tilde"].append(f_tilde_sq.sqrt().cpu().numpy())
        self.tokens["norm_f"].append(out.f.double().norm(dim=-1).cpu().numpy())
        self.tokens["norm_x"].append(out.x_in.double().norm(dim=-1).cpu().numpy())
        self.tokens["norm_x_centred"].append((out.x_in - sae.b_dec).double().norm(dim=-1).cpu().numpy())
        self.tokens["l0"].append(active.sum(-1).cpu().numpy())

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            raise InterlayerError("no activations to evaluate the SAE on")
        mean = self.sum_x / self.n
        total_var = self.sq - self.n * float(mean.square().sum())
        freq = self.fires.double() / self.n
        tokens = {k: np.concatenate(v) for k, v in self.tokens.items()}
        ratio = tokens["norm_f"] / np.maximum(tokens["norm_x"], 1e-30)
        ratio_centred = tokens["norm_f"] / np.maximum(tokens["norm_x_centred"], 1e-30)
        return {
            "nmse": self.err / self.sq,
            "explained_variance": 1 - self.err / total_var,
            "nmse_normalized": self.err_in / self.sq_in,
            "mse_standardized": self.sq_std / (self.n * self.sae.d_in),
            "l0": self.l0 / self.n,
            "dead_frac": float((self.fires == 0).double().mean()),
            "dense_frac": float((freq > DENSE_FREQUENCY).double().mean()),
            "eps_lbo_median": float(np.median(tokens["eps_lbo"])),
            "eps_lbo_mean": float(np.mean(tokens["eps_lbo"])),
            "eps_lbo_form": self.form,
            "eps_lbo_authors_median": float(np.median(tokens["eps_lbo_authors"])),
            "eps_lbo_centred_median": float(np.median(tokens["eps_lbo_centred"])),
            "f_norm_ratio_median": float(np.median(ratio)),
            "f_norm_ratio_mean": float(np.mean(ratio)),
            "f_norm_ratio_centred_median": float(np.median(ratio_centred)),
            "tokens": self.n,
        }, tokens, freq.numpy()


__all__ = ["Accumulator", "eps_lbo_form", "DENSE_FREQUENCY"]
