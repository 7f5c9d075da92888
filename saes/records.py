"""What an SAE's ``metrics.json`` records, shared by ``sae train``, ``sae eval`` and ``sae sweep``."""

from __future__ import annotations

from typing import Any

from .evaluation import SAEEvaluation
from .sae import SAEConfig


def describe(cfg: SAEConfig) -> dict[str, Any]:
    """The SAE itself: architecture, k, latents, top-AFA's AFA form (``authors`` or
    ``centred``; null for the other architectures), the mode (``interlayer`` or
    ``authors-exact``) and the input normalisation."""
    return {"arch": cfg.arch, "k": cfg.k, "d_sae": cfg.d_sae, "afa_form": cfg.afa_form, "mode": cfg.mode,
            "normalization": cfg.normalization}


def metrics_record(evaluation: SAEEvaluation, **extra: Any) -> dict[str, Any]:
    """An evaluation's metrics and spliced numbers in one flat dict (``tokens`` renamed
    ``eval_tokens``), with ``extra`` added."""
    metrics = {**evaluation.metrics, **evaluation.spliced}
    metrics["eval_tokens"] = metrics.pop("tokens")
    metrics.update(extra)
    return metrics
