"""Configs of the ``interlayer steer`` commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.config import ModelOptions, option

from .inject import OPERATORS
from .vectors import METHODS, READS

SITE_CHOICES = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


@dataclass
class SteerTrainConfig(ModelOptions):
    """Steering vectors from contrastive pairs, at several layers from one store pass."""

    dataset: str = option("persona:agreeableness", "caa:<behaviour>, persona:<trait>, power-seeking, or a JSON/JSONL path")
    layers: str = option("all", "comma-separated layers, or 'all'")
    method: str = option("mean_diff", "how the direction is found", choices=METHODS)
    site: str = option("resid_post", "the site kind read and steered", choices=SITE_CHOICES)
    read: str = option("last", "where each text is read: last token, the answer's letter token, or mean over the answer",
                       choices=READS)
    raw: bool = option(False, "keep each direction's own length instead of normalising it to 1")
    chat: bool = option(False, "ask each question through the model's chat template (instruct models)")
    n: int | None = option(None, "use the first n pairs (default: all)", min=2)
    batch_size: int = option(8, "texts per forward pass", min=1)
    out: str = option(None, "the vector file (.safetensors)", required=True, suffixes=(".safetensors",))
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class SteerApplyConfig(ModelOptions):
    """Generate with and without a steering vector, and print both."""

    prompt: str = option(None, "the prompt", positional=True, required=True)
    vector: str = option(None, "a vector file (.safetensors, or a llama.cpp control vector .gguf)", required=True)
    layer: str = option(None, "comma-separated layers to steer (default: every layer of the vector)")
    coef: float = option(4.0, "the coefficient (activation units for a normalised vector)")
    positions: str = option("all", "all, prompt, generated, or a position index to steer from")
    operator: str = option("add", "add the vector or ablate (project out) its direction", choices=OPERATORS)
    preserve_norm: bool = option(False, "rescale steered positions to their original norm")
    max_new_tokens: int = option(40, "tokens to generate", min=1)


@dataclass
class SteerSweepConfig(ModelOptions):
    """Sweep layers x coefficients: behaviour shift, a random direction of the same norm, and Δ perplexity."""

    dataset: str = option("persona:agreeableness", "the evaluation pairs: its test split (CAA's own; otherwise every third item, never trained on)")
    vector: str | None = option(None, "a saved vector (default: train a raw mean_diff vector on the dataset's generate "
                                      "split first, so coefficients are multiples of the mean difference, as CAA)")
    layers: str = option("all", "comma-separated layers, or 'all' (of the vector)")
    coefs: str = option("-4,-2,2,4", "comma-separated coefficients (write --coefs=-4,4 when the first is negative)")
    n: int = option(50, "evaluation pairs", min=1)
    train_n: int = option(200, "pairs the vector is trained on when --vector is not given", min=2)
    seed: int = option(0, "seed of the random directions")
    chat: bool = option(False, "ask each question through the model's chat template (instruct models)")
    perplexity_tokens: int = option(512, "tokens of held-out text (the packaged sample) for the perplexity cost", min=16)
    batch_size: int = option(8, "prompts per forward pass", min=1)
    out: str = option(None, "write the sweep JSON here", required=True, suffixes=(".json",))
    figures: str | None = option(None, "also write the heatmaps to this HTML file", suffixes=(".html",))
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class SteerExportConfig:
    """Convert a steering vector to a llama.cpp control vector (.gguf), or back (.safetensors)."""

    vector: str = option(None, "the vector to convert (.safetensors or .gguf)", required=True)
    gguf: str | None = option(None, "write a llama.cpp control vector here (.gguf)", suffixes=(".gguf",))
    out: str | None = option(None, "or: write an interlayer vector here (.safetensors) from a .gguf",
                             suffixes=(".safetensors",))
    model_hint: str | None = option(None, "the architecture named in the GGUF (default: the vector's model)")
