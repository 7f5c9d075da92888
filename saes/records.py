"""What a trained SAE leaves on disk, shared by ``sae train``, layer-parallel training and
``sae sweep``: :func:`finish_saes` saves each SAE (``sae.safetensors``, ``cfg.json``) and
its ``history.csv``, evaluates them together on held-out text, writes ``metrics.json``
and ``figures.html``, and removes the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interlayer.io.files import write_atomic, write_json_atomic
from interlayer.model.adapter import ModelAdapter

from .checkpoint import CHECKPOINT
from . import evaluation as evaluating
from .evaluation import SAEEvaluation
from .loop import TrainResult
from .options import TrainOptions
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


@dataclass
class EvalOptions:
    """How trained SAEs are evaluated (:func:`~interlayer.saes.evaluate_saes`)."""

    data: str | Path
    """Held-out text: a .txt, .jsonl or .parquet file, or a folder of them."""
    tokens: int = 8192
    context_length: int = 128
    batch_size: int = 8
    """Contexts per forward pass."""
    text_field: str = "text"
    progress: bool = True


@dataclass
class TrainedSAE:
    """A trained SAE on its way to disk."""

    result: TrainResult
    out: Path
    """Its directory."""
    options: TrainOptions
    """The options it trained with (``metrics.json``'s ``train_options``)."""
    label: str = ""
    """Its name in the evaluation."""
    record: dict[str, Any] = field(default_factory=dict)
    """What its ``metrics.json`` records besides the evaluation and the SAE (a sweep
    member's name, grid value and identity)."""


def save_sae(trained: TrainedSAE) -> None:
    """The SAE (``sae.safetensors``, ``cfg.json``) and its ``history.csv``."""
    trained.result.sae.save(trained.out)
    trained.result.to_frame().to_csv(trained.out / "history.csv", index=False)


def finish_saes(trained: Sequence[TrainedSAE], model: ModelAdapter, evaluation: EvalOptions, *, train_source: str,
                site: str | None = None, keep_checkpoint: bool = False) -> list[dict[str, Any]]:
    """The end of training for SAEs of one site: save each (:func:`save_sae`), evaluate
    them together on ``evaluation.data`` (one clean pass, one zero-ablated pass, one
    spliced pass each), write each one's ``metrics.json`` and ``figures.html``, and remove
    its checkpoint (unless ``keep_checkpoint``). Returns the metrics, in order."""
    for item in trained:
        save_sae(item)
    evaluations = evaluating.evaluate_saes([t.result.sae for t in trained], model, evaluation.data, site,
                                           tokens=evaluation.tokens, context_length=evaluation.context_length,
                                           batch_size=evaluation.batch_size, labels=[t.label for t in trained],
                                           text_field=evaluation.text_field, progress=evaluation.progress)
    out = []
    for item, done in zip(trained, evaluations):
        result = item.result
        metrics = metrics_record(done, tokens=result.tokens, seconds=result.seconds,
                                 dead_frac_train=result.dead_frac_window, dead_window_tokens=result.window_tokens)
        metrics.update(describe(result.sae.cfg))
        metrics.update(item.record)
        metrics.update({"eval_data": str(evaluation.data), "train_options": item.options.identity(result.sae.cfg),
                        "train_source": train_source})
        write_figures(item.out / "figures.html", [result.plot(), done.zf_plot(), done.eps_histogram(),
                                                  done.firing_histogram()])
        write_json_atomic(item.out / "metrics.json", metrics)
        if not keep_checkpoint:
            (item.out / CHECKPOINT).unlink(missing_ok=True)  # the SAE is finished and saved
        out.append(metrics)
    return out


def finish_sae(trained: TrainedSAE, model: ModelAdapter, evaluation: EvalOptions, *, train_source: str,
               keep_checkpoint: bool = False) -> dict[str, Any]:
    """:func:`finish_saes` for one SAE."""
    return finish_saes([trained], model, evaluation, train_source=train_source, keep_checkpoint=keep_checkpoint)[0]


def write_figures(path: Path, figures: list[Any]) -> None:
    """Several plotly figures in one self-contained HTML file (plotly.js embedded once)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    page = "<!DOCTYPE html><html><head><meta charset='utf-8'><title>interlayer SAE</title></head><body>" + \
        "".join(parts) + "</body></html>"
    write_atomic(path, page.encode())


__all__ = ["describe", "metrics_record", "EvalOptions", "TrainedSAE", "save_sae", "finish_saes", "finish_sae",
           "write_figures"]
