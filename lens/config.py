"""Configs of the lens commands, shared by the CLI and the Python API, and the lens's
option group :class:`LensOptions` (``--tuned-lens``, with the lens it names)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from interlayer.cli.config import chat_option
from interlayer.model.options import ModelOptions
from interlayer.options import (Options, PassOptions, RunOptions, TextOptions, figures_option, option,
                                out_option, tuned_lens_option)
from interlayer.prompts import ChatMode

from .decoding_options import DecodingOptions
from .tuning_options import TuneOptions

if TYPE_CHECKING:
    from interlayer.decoding import Lens
    from interlayer.model.adapter import ModelAdapter


@dataclass
class LensOptions(Options):
    """The lens a command decodes with: the tuned lens saved in ``--tuned-lens DIR``, else
    the logit lens."""

    tuned_lens: str | None = tuned_lens_option()

    def check_lens(self) -> None:
        """Refuse a ``--tuned-lens`` directory that holds no saved lens (before the model loads)."""
        from .lenses import check_lens_dir

        check_lens_dir(self.tuned_lens)

    def build(self, model: "ModelAdapter") -> "Lens":
        """The lens these options name, for ``model`` (:func:`~interlayer.lens.lenses.load_lens`)."""
        from .lenses import load_lens

        return load_lens(self.tuned_lens, model)


PROMPTS_PER_PASS = "prompts per forward pass"


@dataclass
class LogitLensConfig(RunOptions, LensOptions, ModelOptions):
    """Logit lens: the top tokens of every layer at every position of each prompt."""

    prompt: list[str] | None = option(None, "a prompt to decode (default: 'The Eiffel Tower is in the city of')",
                                      repeat=True)
    targets: list[str] | None = option(None, "a string whose first token's probability and rank to report at every "
                                             "layer, e.g. ' Paris'", repeat=True)
    positions: str = option("all", "decode every position (BOS included) or only the last",
                            choices=("all", "last"))
    chat: ChatMode = chat_option()
    top_k: int = option(1, "tokens shown per cell", min=1)
    memory_mb: float = PassOptions.variant("memory_mb", help="bound on decoding working memory, MiB")
    out: str | None = out_option("also write the table as .csv, "
                                 "or the whole result as .json (LogitLensResult.load reads it)",
                                 suffixes=(".csv", ".json"))
    figures: str | None = figures_option("the heatmap of the first prompt")


@dataclass
class TuneConfig(TuneOptions, RunOptions, TextOptions, ModelOptions):
    """Train a tuned lens (one affine translator per layer) on the model's own activations."""

    out: str | None = out_option("directory for lens.safetensors + config.json (and checkpoints)", required=True)
    tokens: int = TextOptions.variant("tokens", 8192, "training tokens, taken from the start of --data")
    eval_tokens: int = option(2048, "held-out tokens, taken from the text after the training tokens", min=1)


@dataclass
class LatentConfig(RunOptions, LensOptions, ModelOptions):
    """Latent-language analysis: per-layer probability of the target, English and source words."""

    src: str = option("fr", "source language code")
    tgt: str = option("zh", "target language code")
    task: str = option("translation", "translation, repetition or cloze", choices=("translation", "repetition", "cloze"))
    latent: str = option("en", "comma-separated latent languages to track", items=str)
    shots: int = option(4, "demonstrations per prompt", min=0)
    seed: int = option(0, "seed for choosing demonstrations", group="data")
    n: int | None = option(None, "use at most this many words (default: every usable word)", min=1)
    chat: ChatMode = chat_option()
    batch_size: int = PassOptions.variant("batch_size", help=PROMPTS_PER_PASS)
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the per-layer probabilities")


@dataclass
class SaturationConfig(RunOptions, LensOptions, TextOptions, ModelOptions):
    """Layer saturation and early exit: when does each layer's top-1 already match the final one?"""

    tokens: int = TextOptions.variant("tokens", help="tokens to analyse")
    batch_size: int = PassOptions.variant("batch_size")
    out: str | None = out_option("write the per-layer table as .csv, "
                                 "or the whole result as .json (SaturationResult.load reads it)",
                                 suffixes=(".csv", ".json"))
    figures: str | None = figures_option("the saturation curves")


@dataclass
class GenerateConfig(LensOptions, DecodingOptions, ModelOptions):
    """Generate with greedy, LFD or DoLa decoding; prints the text and the layer used at each step."""

    prompt: list[str] | None = option(None, "a prompt", required=True, repeat=True)
    max_new_tokens: int = option(16, "tokens to generate at most", min=1)
    chat: ChatMode = chat_option()
    batch_size: int = PassOptions.variant("batch_size", help=PROMPTS_PER_PASS)
    out: str | None = out_option("write what --json prints here: one prompt's generation (Generation.load reads it) "
                                 "or a list of them (Generation.load_all)", suffixes=(".json",))


@dataclass
class IKSConfig(RunOptions, LensOptions, ModelOptions):
    """IKS per layer while the model answers QA prompts, the fusion layer l* and the per-step choices."""

    dataset: str = option("nq", "nq, squad, known, or a .json/.jsonl QA records file")
    n: int = option(50, "questions", min=1)
    passage: bool = option(True, "put the gold passage in the prompt (--no-passage: closed book)")
    candidates: str | None = DecodingOptions.variant("candidates", help="comma-separated candidate blocks (default: "
                                                                        "even blocks of the latter half)")
    metric: str = DecodingOptions.variant("metric", help="'jsd' of decoded distributions or 'cosine' distance of "
                                                         "states")
    select: str = DecodingOptions.variant("select", help="IKS at every decoding 'step', or once per 'example' (the "
                                                         "prompt's last position)")
    max_new_tokens: int = GenerateConfig.variant("max_new_tokens", 8, "decoding steps per question (select=step)")
    chat: ChatMode = chat_option()
    batch_size: int = PassOptions.variant("batch_size", 4, PROMPTS_PER_PASS)
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the IKS per layer and the histogram of choices")


@dataclass
class QAConfig(RunOptions, LensOptions, DecodingOptions, ModelOptions):
    """Closed- and open-book QA with greedy, LFD, DoLa and LFD-random decoding: exact match and answer-contained."""

    dataset: str = option("nq", "nq, squad, known, or a .json/.jsonl QA records file")
    n: int = option(100, "questions", min=1)
    decoding: str = option("greedy,lfd,dola,lfd-random", "comma-separated decodings")
    noise_docs: int = option(0, "passages of other questions added to the open-book context", min=0)
    seed: int = DecodingOptions.variant("seed", help="seed of lfd-random's layer choices and of the noise passages")
    max_new_tokens: int = GenerateConfig.variant("max_new_tokens")
    chat: ChatMode = chat_option()
    batch_size: int = PassOptions.variant("batch_size", help=PROMPTS_PER_PASS)
    out: str | None = out_option("write the result JSON here (finished batches are journalled to OUT.progress.jsonl; "
                                 "a rerun resumes)", suffixes=(".json",))
    figures: str | None = figures_option("the accuracy per decoding")


def decoding_options(config: DecodingOptions, decoding: str = "greedy") -> DecodingOptions:
    """The :class:`~interlayer.lens.decoding_options.DecodingOptions` alone, out of a
    command config that composes them (``decoding``: the one to set)."""
    values = {f.name: getattr(config, f.name) for f in fields(DecodingOptions)}
    return DecodingOptions(**{**values, "decoding": decoding})
