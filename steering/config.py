"""Configs of the ``interlayer steer`` commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.cli.config import chat_option
from interlayer.model.options import ModelOptions
from interlayer.model.sites import SITE_KINDS
from interlayer.options import Options, PassOptions, RunOptions, figures_option, layer_spec, option, out_option
from interlayer.prompts import ChatMode

from .inject import OPERATORS
from .vectors import METHODS, READS

SITE_CHOICES = SITE_KINDS
"""The site kinds a vector is read and steered at (:data:`interlayer.model.sites.SITE_KINDS`)."""

LAYERS_HELP = "'all', or layers and ranges such as 6-12,-1 (negative: from the end)"


@dataclass
class SteerTrainConfig(RunOptions, ModelOptions):
    """Steering vectors from contrastive pairs, at several layers from one store pass."""

    dataset: str = option("persona:agreeableness", "caa:<behaviour>, persona:<trait>, power-seeking, or a JSON/JSONL "
                                                   "records file of contrast pairs")
    n: int | None = option(None, "use the first n pairs (default: all)", min=2)
    chat: ChatMode = chat_option("ask each question through the model's chat template: auto (instruct models that have "
                            "one), yes or no; recorded in the vector")
    layers: str = option("all", f"layers to train: {LAYERS_HELP}", parse=layer_spec)
    site_kind: str = option("resid_post", "the site kind read and steered (at each of --layers)", choices=SITE_CHOICES)
    method: str = option("mean_diff", "how the direction is found", choices=METHODS)
    read: str = option("last", "where each text is read: last token, the answer's letter token, or mean over the answer",
                       choices=READS)
    raw: bool = option(False, "keep each direction's own length instead of normalising it to 1")
    batch_size: int = PassOptions.variant("batch_size", help="texts per forward pass")
    out: str = out_option("the vector file (.safetensors)", required=True, suffixes=(".safetensors",))


@dataclass
class SteerApplyConfig(ModelOptions):
    """Generate with and without a steering vector, and print both."""

    prompt: list[str] | None = option(None, "a prompt", required=True, repeat=True)
    vector: str = option(None, "a vector file (.safetensors, or a llama.cpp control vector .gguf)", required=True,
                         group="data")
    chat: ChatMode = chat_option("wrap each prompt in the model's chat template: auto (as the vector was trained, when it "
                            "records it; else instruct models that have a template), yes or no")
    layers: str | None = option(None, f"layers to steer: {LAYERS_HELP} (default: every layer of the vector)",
                                parse=layer_spec)
    coef: float = option(4.0, "the coefficient (activation units for a normalised vector)")
    positions: str = option("all", "all, prompt, generated, or a position index to steer from")
    operator: str = option("add", "add the vector or ablate (project out) its direction", choices=OPERATORS)
    preserve_norm: bool = option(False, "rescale steered positions to their original norm")
    max_new_tokens: int = option(40, "tokens to generate", min=1)


@dataclass
class SteerSweepConfig(RunOptions, ModelOptions):
    """Sweep layers x coefficients: behaviour shift, a random direction of the same norm, and Δ perplexity."""

    dataset: str = option("persona:agreeableness", "the evaluation pairs: its test split (CAA's own; otherwise every "
                                                   "third item, never trained on)")
    vector: str | None = option(None, "a saved vector (default: train a raw mean_diff vector on the dataset's generate "
                                      "split first, so coefficients are multiples of the mean difference, as CAA)",
                                group="data")
    n: int = option(50, "evaluation pairs", min=1)
    train_n: int = option(200, "pairs the vector is trained on when --vector is not given", min=2)
    chat: ChatMode = chat_option("ask each question through the model's chat template: auto (instruct models that have "
                            "one), yes or no")
    layers: str = option("all", f"layers to sweep: {LAYERS_HELP} ('all': every layer of the vector)", parse=layer_spec)
    coefs: str = option("-4,-2,2,4", "comma-separated coefficients, negatives allowed (--coefs -4,4)", items=float)
    seed: int = option(0, "seed of the random directions")
    perplexity_tokens: int = option(512, "tokens of held-out text (the packaged sample) for the perplexity cost", min=16)
    batch_size: int = PassOptions.variant("batch_size", help="prompts per forward pass")
    out: str = out_option("write the sweep JSON here", required=True, suffixes=(".json",))
    figures: str | None = figures_option("the heatmaps")


@dataclass
class SteerExportConfig(Options):
    """Convert a steering vector to a llama.cpp control vector (.gguf), or back (.safetensors)."""

    vector: str = option(None, "the vector to convert (.safetensors or .gguf)", required=True, group="data")
    out: str = out_option("the converted file: .gguf (a llama.cpp control vector, from a .safetensors vector) or "
                          ".safetensors (an interlayer vector, from a .gguf)", required=True,
                          suffixes=(".gguf", ".safetensors"))
    model_hint: str | None = option(None, "the architecture named in the GGUF (default: the vector's model)")
    layers: str | None = option(None, "layers to write to a .gguf: block indices and ranges such as 4-12 (default: every "
                                "layer of the vector but 0, which llama.cpp never steers)", parse=layer_spec)
