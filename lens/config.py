"""Configs of the lens commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.config import ModelOptions, option


@dataclass
class TuneConfig(ModelOptions):
    """Train a tuned lens (one affine translator per layer) on the model's own activations."""

    data: str | None = option(None, "training text: .txt (one document per line), .jsonl or .parquet (default: the packaged sample)")
    out: str | None = option(None, "directory for lens.safetensors + config.json (and checkpoints)", required=True)
    tokens: int = option(8192, "training tokens, taken from the start of --data", min=1)
    eval_tokens: int = option(2048, "held-out tokens, taken from the text after the training tokens", min=1)
    layers: str = option("all", "comma-separated layers to train, or 'all' (every layer but the last)")
    steps: int = option(300, "optimizer steps", min=1)
    batch_size: int = option(32, "tokens per step", min=1)
    lr: float = option(3e-4, "Adam learning rate (after linear warmup, decays linearly to 0)", above=0)
    warmup: int = option(20, "warmup steps", min=0)
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    seed: int = option(0, "seed of the row order")
    checkpoint_every: int = option(50, "write a resumable checkpoint every N steps (0: never)", min=0)
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class LatentConfig(ModelOptions):
    """Latent-language analysis: per-layer probability of the target, English and source words."""

    src: str = option("fr", "source language code")
    tgt: str = option("zh", "target language code")
    task: str = option("translation", "translation, repetition or cloze", choices=("translation", "repetition", "cloze"))
    out: str | None = option(None, "write the result JSON here", suffixes=(".json",))
    latent: str = option("en", "comma-separated latent languages to track")
    shots: int = option(4, "demonstrations per prompt", min=0)
    seed: int = option(0, "seed for choosing demonstrations")
    limit: int | None = option(None, "use at most this many words", min=1)
    tuned_lens: str | None = option(None, "decode with this saved tuned lens instead of the logit lens")
    batch_size: int = option(8, "prompts per forward pass", min=1)
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class SaturationConfig(ModelOptions):
    """Layer saturation and early exit: when does each layer's top-1 already match the final one?"""

    data: str | None = option(None, "text sample: .txt, .jsonl or .parquet (default: the packaged sample)")
    tokens: int = option(4096, "tokens to analyse", min=1)
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    tuned_lens: str | None = option(None, "decode with this saved tuned lens instead of the logit lens")
    out: str | None = option(None, "write the per-layer table as .csv or .json", suffixes=(".csv", ".json"))
    no_progress: bool = option(False, "hide the progress bar")
