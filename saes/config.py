"""Configs of the ``interlayer sae`` commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.config import ModelOptions, option
from interlayer.loading import DEFAULT_MODEL

from .activations import ARCHITECTURES
from .normalization import NORMALIZATIONS
from .training import TrainOptions


@dataclass
class SAETrainConfig(ModelOptions, TrainOptions):
    """Train a sparse autoencoder on one hook site (streamed from --data, or from cached --activations)."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    site: str = option("resid_post.6", "the hook site the SAE reads, e.g. resid_post.6")
    arch: str = option("topafa", "SAE architecture", choices=ARCHITECTURES)
    latents: int | None = option(None, "number of latents h (default: 16 x d_model)")
    k: int | None = option(None, "latents per token (topk; the batch mean for batchtopk)")
    data: str | None = option(None, "training text, streamed through the model: .txt (one document per line), .jsonl or .parquet")
    activations: str | None = option(None, "a directory written by `interlayer cache` (instead of --data)")
    out: str = option(None, "output directory: sae.safetensors, cfg.json, metrics.json (a run there is resumed)")
    normalization: str = option("standardize", "input normalisation", choices=NORMALIZATIONS)
    context_length: int = option(128, "tokens per packed context when streaming, BOS included")
    forward_batch_size: int = option(8, "contexts per model forward pass when streaming")
    memory_mb: float = option(256.0, "activation chunk size when streaming, MiB")
    eval_data: str | None = option(None, "text for the final evaluation (default: --data, else the packaged sample)")
    eval_tokens: int = option(8192, "tokens of the final evaluation")
    no_progress: bool = option(False, "hide the progress bars")


@dataclass
class SAEEvalConfig(ModelOptions):
    """Evaluate a saved SAE: reconstruction, sparsity, eps_LBO, and CE loss recovered when spliced in."""

    sae: str = option(None, "directory of a saved SAE (sae.safetensors + cfg.json), or of a SAELens SAE")
    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    data: str | None = option(None, "evaluation text: .txt, .jsonl or .parquet (default: the packaged sample)")
    out: str = option(None, "write the metrics JSON here")
    site: str | None = option(None, "hook site (default: the one in the SAE's config)")
    tokens: int = option(8192, "evaluation tokens")
    context_length: int = option(128, "tokens per packed context, BOS included")
    batch_size: int = option(2, "contexts per forward pass")
    figures: str | None = option(None, "also write the ZF plot, eps_LBO and firing histograms to this HTML file")
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class SAEExportConfig:
    """Convert a saved SAE to the SAELens on-disk format, or a SAELens SAE to ours."""

    sae: str = option(None, "directory of the SAE to convert")
    out: str = option(None, "output directory")
    to: str = option("saelens", "target format", choices=("saelens", "interlayer"))
