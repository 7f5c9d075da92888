"""What the ``interlayer sae`` commands record and write (``metrics.json``, figure pages),
shared by ``sae train``, ``sae eval`` and ``sae sweep``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from interlayer.files import write_atomic

from .evaluation import SAEEvaluation
from .sae import SAEConfig
from .training import TrainOptions


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


def write_figures(path: Path, figures: list[Any]) -> None:
    """Several plotly figures in one self-contained HTML file (plotly.js embedded once)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    page = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>interlayer SAE</title></head><body>" + \
        "".join(parts) + "</body></html>"
    write_atomic(path, page.encode())


def train_options(cfg: Any) -> TrainOptions:
    """The :class:`TrainOptions` part of a ``sae train`` config."""
    return TrainOptions(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainOptions)})
