"""Input normalisation of an SAE: what the SAE sees, and how its output is mapped back.

* ``none``: activations as they are.
* ``standardize``: the top-AFA authors' per-token standardisation,
  ``(x - mean(x)) / (std(x) + 1e-5)`` over the ``d_in`` features of each token
  (``std`` with Bessel's correction, as ``torch.std``); undone per token as
  ``x_hat * std + mean``. This is SAELens's ``layer_norm`` normalisation, exactly.
* ``mean_norm``: one scale ``c = sqrt(d_in) / E||x||`` estimated on training data
  (SAELens's ``expected_average_only_in``), so inputs have mean norm ``sqrt(d_in)``.
"""

from __future__ import annotations

import torch

from interlayer.errors import InterlayerError, choices

NORMALIZATIONS = ("none", "standardize", "mean_norm")
STD_EPS = 1e-5


def check_normalization(name: str) -> str:
    if name not in NORMALIZATIONS:
        raise InterlayerError(f"unknown input normalisation {name!r}; valid choices: {choices(NORMALIZATIONS)}")
    return name


def mean_norm_scale(sample: torch.Tensor) -> float:
    """``sqrt(d) / mean_b ||x_b||`` for a ``[rows, d]`` sample."""
    norms = sample.float().norm(dim=-1)
    mean = float(norms.mean())
    if not mean > 0 or not torch.isfinite(norms).all():
        raise InterlayerError("cannot estimate the mean-norm scale: the sample's mean norm is zero or not finite")
    return sample.shape[-1] ** 0.5 / mean


def normalize(x: torch.Tensor, kind: str, scale: float) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The SAE's input for activations ``x``, and what :func:`denormalize` needs."""
    if kind == "none":
        return x, None
    if kind == "mean_norm":
        return x * scale, None
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    std = centred.std(-1, keepdim=True)
    return centred / (std + STD_EPS), (mean, std)


def denormalize(x_hat: torch.Tensor, kind: str, scale: float, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Map a reconstruction in the SAE's space back to the activations' space."""
    if kind == "none":
        return x_hat
    if kind == "mean_norm":
        return x_hat / scale
    assert stats is not None
    mean, std = stats
    return x_hat * std + mean  # as the authors (and SAELens's layer_norm) undo it: without the eps
