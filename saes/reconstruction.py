"""Reconstruction metrics of an SAE, accumulated over batches of activations (the
formulas are in :mod:`interlayer.saes.evaluation`'s docstring): NMSE, explained
variance, L0, dead and dense latents, the authors' standardised MSE, and per token
ε_LBO in both forms and the norm ratios.

Memory does not grow with the number of tokens:

* sums (NMSE, explained variance, L0, firing counts, the standardised MSE, the means of
  ε_LBO and of the norm ratio) are running float64 sums;
* the per-token diagnostics are kept for at most ``per_token_rows`` tokens
  (:class:`Reservoir`: every token while there are no more, then a uniform sample,
  seeded); ``per_token_rows=None`` keeps every token (O(tokens) memory);
* the medians are exact (``np.median`` of every token's value) while every token is kept;
  beyond that they come from a :class:`QuantileSketch`, within a relative
  :data:`QUANTILE_ACCURACY` (0.1%) of the exact median.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from interlayer.errors import InterlayerError

from .normalization import STD_EPS, normalize
from .sae import SAE

DENSE_FREQUENCY = 0.1
"""A latent firing on more than this fraction of the tokens is dense."""

PER_TOKEN_ROWS = 65_536
"""The default bound on the per-token rows an evaluation keeps (9 numbers a token,
about 4.7 MB per SAE); evaluations of at most this many tokens keep them all."""

QUANTILE_ACCURACY = 1e-3
"""The relative accuracy of a :class:`QuantileSketch`'s quantiles."""

TOKEN_COLUMNS = ("norm_z", "norm_f_tilde", "norm_f", "norm_x", "norm_x_centred", "eps_lbo", "eps_lbo_authors",
                 "eps_lbo_centred", "l0")
"""The per-token diagnostics, in the order of the per-token frame."""

MEDIANS = ("eps_lbo", "eps_lbo_authors", "eps_lbo_centred", "f_norm_ratio", "f_norm_ratio_centred")
"""The per-token quantities whose medians are metrics (``<name>_median``)."""


def eps_lbo_form(sae: SAE) -> str:
    """The ε_LBO form that matches how ``sae`` was trained: ``centred`` for a centred
    top-AFA SAE, ``authors`` otherwise."""
    return "centred" if sae.cfg.afa_form == "centred" else "authors"


class QuantileSketch:
    """Quantiles of a stream of non-negative values in fixed memory, with a relative error
    bound (DDSketch; Masson, Rim and Lee 2019, "DDSketch: a fast and fully-mergeable
    quantile sketch with relative-error guarantees").

    A value ``x > 0`` is counted in bucket ``i = ceil(log_γ x)`` with
    ``γ = (1 + α) / (1 - α)``, which holds ``(γ^(i-1), γ^i]``; the bucket's value is
    ``2 γ^i / (γ + 1)``, within a relative ``α`` of every value in it. So the value at any
    rank is within a relative ``α`` of the exact order statistic, and the median (the mean
    of the two middle values, as ``np.median``) within ``α`` of the exact median (to float
    rounding). Zeros are counted exactly; values outside ``[low, high]`` are counted at the
    nearest end (no guarantee there); a negative value counts as zero; a NaN makes every
    quantile NaN, as ``np.median`` does. Memory: ``log_γ(high / low)`` counts (69,078 for
    the defaults, 0.55 MB), whatever the number of values.
    """

    def __init__(self, alpha: float = QUANTILE_ACCURACY, low: float = 1e-30, high: float = 1e30) -> None:
        if not 0 < alpha < 1 or not 0 < low < high:
            raise InterlayerError(f"a quantile sketch needs 0 < alpha < 1 and 0 < low < high, got alpha={alpha}, "
                                  f"low={low}, high={high}")
        self.gamma = (1 + alpha) / (1 - alpha)
        self.log_gamma = math.log(self.gamma)
        self.offset = math.ceil(math.log(low) / self.log_gamma)
        self.counts = np.zeros(math.ceil(math.log(high) / self.log_gamma) - self.offset + 1, dtype=np.int64)
        self.zeros = 0
        self.nans = 0
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        """Count ``values`` (any shape)."""
        v = np.asarray(values, dtype=np.float64).ravel()
        self.n += v.size
        nan = np.isnan(v)
        self.nans += int(nan.sum())
        v = v[~nan]
        positive = v > 0
        self.zeros += int(v.size - positive.sum())
        index = np.ceil(np.log(v[positive]) / self.log_gamma).astype(np.int64) - self.offset
        self.counts += np.bincount(np.clip(index, 0, self.counts.size - 1), minlength=self.counts.size)

    def value_at(self, rank: int) -> float:
        """The value of 0-based ``rank`` (``0 <= rank < n``), within a relative ``α``."""
        if not 0 <= rank < self.n:
            raise InterlayerError(f"rank {rank} is out of range for a sketch of {self.n} values")
        if rank < self.zeros:
            return 0.0
        bucket = int(np.searchsorted(np.cumsum(self.counts), rank - self.zeros, side="right"))
        return 2 * self.gamma ** (bucket + self.offset) / (self.gamma + 1)

    def median(self) -> float:
        """The median (the mean of the two middle values), within a relative ``α``."""
        if self.n == 0:
            raise InterlayerError("no values to take the median of")
        if self.nans:
            return float("nan")
        return (self.value_at((self.n - 1) // 2) + self.value_at(self.n // 2)) / 2


class Reservoir:
    """At most ``capacity`` rows of a stream of columns: every row while there are no more
    than ``capacity``, then a uniform sample of them (Vitter's algorithm R, seeded with
    ``seed``, so a rerun keeps the same rows). ``capacity=None`` keeps every row.
    The sample's buffers are allocated once, at the first rows."""

    def __init__(self, capacity: int | None = PER_TOKEN_ROWS, seed: int = 0) -> None:
        if capacity is not None and (isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1):
            raise InterlayerError(f"per_token_rows must be a whole number of at least 1 or None (every token), "
                                  f"got {capacity!r}")
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.fill = 0
        self.columns: dict[str, np.ndarray] = {}
        self.parts: dict[str, list[np.ndarray]] = {}

    @property
    def complete(self) -> bool:
        """Whether every row seen is kept."""
        return self.fill == self.seen

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """Offer one batch of rows (every column of the same length)."""
        m = len(next(iter(columns.values())))
        if self.capacity is None:
            for name, values in columns.items():
                self.parts.setdefault(name, []).append(values)
            self.seen += m
            self.fill += m
            return
        if not self.columns:
            self.columns = {name: np.empty(self.capacity, dtype=values.dtype) for name, values in columns.items()}
        take = min(m, self.capacity - self.fill)
        for name, values in columns.items():
            self.columns[name][self.fill:self.fill + take] = values[:take]
        self.fill += take
        if take < m:  # row number i (0-based over the stream) replaces slot j ~ U{0..i} when j < capacity
            numbers = self.seen + np.arange(take, m)
            slots = self.rng.integers(0, numbers + 1)
            rows = np.arange(take, m)[slots < self.capacity]
            slots = slots[slots < self.capacity]
            _, last = np.unique(slots[::-1], return_index=True)  # a slot chosen twice keeps the later row
            keep = len(slots) - 1 - last
            for name, values in columns.items():
                self.columns[name][slots[keep]] = values[rows[keep]]
        self.seen += m

    def rows(self) -> dict[str, np.ndarray]:
        """The kept rows, column by column (in stream order while :attr:`complete`)."""
        if self.capacity is None:
            return {name: np.concatenate(parts) for name, parts in self.parts.items()}
        return {name: values[:self.fill] for name, values in self.columns.items()}


class Accumulator:
    """Running sums of the reconstruction metrics, the per-token diagnostics of at most
    ``per_token_rows`` tokens (:class:`Reservoir`, seeded with ``seed``; ``None``: every
    token) and a :class:`QuantileSketch` per median (see the module docstring)."""

    def __init__(self, sae: SAE, per_token_rows: int | None = PER_TOKEN_ROWS, seed: int = 0) -> None:
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
        self.sample = Reservoir(per_token_rows, seed)
        self.sketches = {name: QuantileSketch() for name in MEDIANS}
        self.sums = {"eps_lbo": 0.0, "f_norm_ratio": 0.0}

    @torch.no_grad()
    def add(self, x: torch.Tensor, target: torch.Tensor | None = None) -> None:
        """Add a batch of activations ``[..., d_in]``. ``target``: what the output is
        compared with (a transcoder's output-site activations ``[..., d_out]``, row for
        row); ``None``: ``x`` itself."""
        sae = self.sae
        x = x.reshape(-1, x.shape[-1]).to(sae.device, sae.W_enc.dtype)
        out = sae(x)
        if target is None:
            y, y_in = x, out.x_in
        else:
            y = target.reshape(-1, target.shape[-1]).to(sae.device, sae.W_enc.dtype)
            if y.shape != out.x_hat.shape:
                raise InterlayerError(f"the target has shape {tuple(y.shape)}; the SAE outputs {tuple(out.x_hat.shape)}")
            y_in = normalize(y, sae.cfg.normalization, sae.cfg.scale)[0]  # a transcoder's: none or mean_norm
        diff = (y - out.x_hat).double()
        self.err += float(diff.square().sum())
        self.sq += float(y.double().square().sum())
        self.err_in += float((y_in - out.x_hat_in).double().square().sum())
        self.sq_in += float(y_in.double().square().sum())
        s = y.double().sum(0)
        self.sum_x = s if self.sum_x is None else self.sum_x + s
        active = out.f > 0
        self.l0 += float(active.sum())
        self.fires += active.sum(0).cpu()
        self.n += x.shape[0]
        xd = y.double()
        std = (xd - xd.mean(-1, keepdim=True)).std(-1, keepdim=True)
        self.sq_std += float((diff / (std + STD_EPS)).square().sum())
        self._add_tokens(self._token_columns(out, active))

    def _token_columns(self, out: Any, active: torch.Tensor) -> dict[str, np.ndarray]:
        """The per-token diagnostics of one batch (:data:`TOKEN_COLUMNS`)."""
        sae = self.sae
        dec_norms = sae.W_dec.norm(dim=-1)
        coded_sq = (out.f * dec_norms).double().square().sum(-1)
        forms = {"authors": (out.x_in.double().square().sum(-1), coded_sq + float(sae.b_dec.double().norm()) ** 2),
                 "centred": ((out.x_in - sae.b_dec).double().square().sum(-1), coded_sq)}
        eps = {name: ((z_sq - f_sq).abs() / ((sae.d_sae - 1) * f_sq.clamp_min(1e-30))).cpu().numpy()
               for name, (z_sq, f_sq) in forms.items()}
        z_sq, f_tilde_sq = forms[self.form]
        columns = {"norm_z": z_sq.sqrt().cpu().numpy(), "norm_f_tilde": f_tilde_sq.sqrt().cpu().numpy(),
                   "norm_f": out.f.double().norm(dim=-1).cpu().numpy(),
                   "norm_x": out.x_in.double().norm(dim=-1).cpu().numpy(),
                   "norm_x_centred": (out.x_in - sae.b_dec).double().norm(dim=-1).cpu().numpy(),
                   "eps_lbo": eps[self.form], "eps_lbo_authors": eps["authors"], "eps_lbo_centred": eps["centred"],
                   "l0": active.sum(-1).cpu().numpy()}
        return {name: columns[name] for name in TOKEN_COLUMNS}

    def _add_tokens(self, columns: dict[str, np.ndarray]) -> None:
        """Offer one batch's per-token rows to the sample, the sketches and the sums."""
        self.sample.add(columns)
        values = _median_values(columns)
        for name, sketch in self.sketches.items():
            sketch.add(values[name])
        for name in self.sums:
            self.sums[name] += float(values[name].sum())

    def result(self) -> tuple[dict[str, Any], dict[str, np.ndarray], np.ndarray]:
        """``(metrics, per-token rows kept, per-latent firing frequency)``. While every token
        is kept the medians and means are those of every token's value (``np.median``,
        ``np.mean``); beyond, the medians come from the sketches and the means from the sums."""
        if self.n == 0:
            raise InterlayerError("no activations to evaluate the SAE on")
        mean = self.sum_x / self.n
        total_var = self.sq - self.n * float(mean.square().sum())
        freq = self.fires.double() / self.n
        tokens = self.sample.rows()
        if self.sample.complete:
            values = _median_values(tokens)
            medians = {name: float(np.median(values[name])) for name in MEDIANS}
            means = {name: float(np.mean(values[name])) for name in self.sums}
        else:
            medians = {name: sketch.median() for name, sketch in self.sketches.items()}
            means = {name: total / self.n for name, total in self.sums.items()}
        return {
            "nmse": self.err / self.sq,
            "explained_variance": 1 - self.err / total_var,
            "nmse_normalized": self.err_in / self.sq_in,
            "mse_standardized": self.sq_std / (self.n * self.sae.cfg.output_width),
            "l0": self.l0 / self.n,
            "dead_frac": float((self.fires == 0).double().mean()),
            "dense_frac": float((freq > DENSE_FREQUENCY).double().mean()),
            "eps_lbo_median": medians["eps_lbo"],
            "eps_lbo_mean": means["eps_lbo"],
            "eps_lbo_form": self.form,
            "eps_lbo_authors_median": medians["eps_lbo_authors"],
            "eps_lbo_centred_median": medians["eps_lbo_centred"],
            "f_norm_ratio_median": medians["f_norm_ratio"],
            "f_norm_ratio_mean": means["f_norm_ratio"],
            "f_norm_ratio_centred_median": medians["f_norm_ratio_centred"],
            "tokens": self.n,
        }, tokens, freq.numpy()


def _median_values(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The per-token quantities of :data:`MEDIANS` from per-token columns."""
    return {"eps_lbo": columns["eps_lbo"], "eps_lbo_authors": columns["eps_lbo_authors"],
            "eps_lbo_centred": columns["eps_lbo_centred"],
            "f_norm_ratio": columns["norm_f"] / np.maximum(columns["norm_x"], 1e-30),
            "f_norm_ratio_centred": columns["norm_f"] / np.maximum(columns["norm_x_centred"], 1e-30)}


__all__ = ["Accumulator", "QuantileSketch", "Reservoir", "eps_lbo_form", "DENSE_FREQUENCY", "PER_TOKEN_ROWS",
           "QUANTILE_ACCURACY", "TOKEN_COLUMNS"]
