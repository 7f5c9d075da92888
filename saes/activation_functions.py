"""Deprecated: the activation functions moved to one module per architecture under
:mod:`interlayer.saes.archs` (``relu``, ``topk``, ``batchtopk``, ``jumprelu``, ``topafa``).
This module re-exports them for one release."""

from __future__ import annotations

import warnings
from typing import Any

from .archs import (AFA_FORMS, SAE_ARCHITECTURES, SPARSE_DENSITY, Activation, BatchTopK, Code, EncodeContext,
                    JumpReLU, ReLU, TopAFA, TopK, candidates_for, coo_code, dense_code)
from .archs.jumprelu import _ThresholdFunction

warnings.warn("interlayer.saes.activation_functions is deprecated; import from interlayer.saes.archs",
              DeprecationWarning, stacklevel=2)


def make_activation(arch: str, d_sae: int, k: int | None, **options: Any) -> Activation:
    """The activation module of architecture ``arch`` (deprecated: build an
    :class:`~interlayer.saes.SAE` from an :class:`~interlayer.saes.SAEConfig`)."""
    if arch == "relu":
        return ReLU()
    if arch == "topk":
        return TopK(k)
    if arch == "batchtopk":
        return BatchTopK(k)
    if arch == "jumprelu":
        return JumpReLU(d_sae, options.get("jumprelu_init_threshold", 0.001), options.get("jumprelu_bandwidth", 0.001))
    if arch == "topafa":
        exact = bool(options.get("sentinel", False))
        return TopAFA(fast=not exact, sentinel=exact)
    raise ValueError(arch)


__all__ = ["SAE_ARCHITECTURES", "AFA_FORMS", "Code", "SPARSE_DENSITY", "_ThresholdFunction", "coo_code", "dense_code", "Activation",
           "EncodeContext", "ReLU", "TopK", "BatchTopK", "JumpReLU", "TopAFA", "candidates_for", "make_activation"]
