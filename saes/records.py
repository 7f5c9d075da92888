"""What the ``interlayer sae`` commands record and write (``metrics.json``, figure pages),
shared by ``sae train``, ``sae eval`` and ``sae sweep``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from interlayer.io.files import write_atomic

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


def save_trained(cfg: Any, model: Any, result: Any, options: TrainOptions, out: Path,
                 keep_checkpoint: bool = False) -> dict[str, Any]:
    """The end of ``sae train`` for one SAE: save it to ``out``, evaluate it on
    ``--eval-data`` (else ``--data``, else the packaged sample), write ``metrics.json``,
    ``history.csv`` and ``figures.html``, and remove the checkpoint (unless ``keep_checkpoint``)."""
    from interlayer.io.files import write_json_atomic
    from interlayer.model.loading import SAMPLE_TEXT

    from .evaluation import evaluate_sae
    from .training import CHECKPOINT

    site = result.sae.cfg.site
    result.sae.save(out)
    result.to_frame().to_csv(out / "history.csv", index=False)
    eval_data = cfg.eval_data or cfg.data or str(SAMPLE_TEXT)
    evaluation = evaluate_sae(result.sae, model, eval_data, site, tokens=cfg.eval_tokens,
                              context_length=cfg.context_length, label=f"{cfg.arch} {site}",
                              text_field=getattr(cfg, "text_field", "text"), progress=not cfg.no_progress)
    metrics = metrics_record(evaluation, tokens=result.tokens, seconds=result.seconds,
                             dead_frac_train=result.dead_frac_window, dead_window_tokens=result.window_tokens)
    metrics.update(describe(result.sae.cfg))
    metrics["eval_data"] = str(eval_data)
    metrics["train_options"] = options.identity(result.sae.cfg)
    metrics["train_source"] = str(cfg.activations or cfg.data)
    metrics["eval_tokens"] = evaluation.metrics["tokens"]
    write_json_atomic(out / "metrics.json", metrics)
    write_figures(out / "figures.html", [result.plot(), evaluation.zf_plot(), evaluation.eps_histogram(),
                                         evaluation.firing_histogram()])
    if not keep_checkpoint:
        (out / CHECKPOINT).unlink(missing_ok=True)  # the run is complete and saved
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
