"""Configs of the lens commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interlayer.cli.config import (ModelOptions, chat_option, data_option, figures_option, option, out_option,
                               text_field_option, tuned_lens_option)
from interlayer.errors import InterlayerError
from interlayer.options import int_list, layer_spec


@dataclass
class TuneConfig(ModelOptions):
    """Train a tuned lens (one affine translator per layer) on the model's own activations."""

    data: str | None = data_option()
    text_field: str = text_field_option()
    out: str | None = out_option("directory for lens.safetensors + config.json (and checkpoints)", required=True)
    tokens: int = option(8192, "training tokens, taken from the start of --data", min=1)
    eval_tokens: int = option(2048, "held-out tokens, taken from the text after the training tokens", min=1)
    layers: str = option("all", "layers to train: 'all' (every layer but the last), or indices and ranges such as "
                                "0-8,-2 (negative: from the end)", parse=layer_spec, group="method")
    steps: int = option(300, "optimizer steps", min=1)
    batch_size: int = option(32, "training tokens per optimizer step", min=1, flag="--tokens-per-step",
                             group="training")
    lr: float = option(3e-4, "Adam learning rate (after linear warmup, decays linearly to 0)", above=0)
    warmup: int = option(20, "linear learning-rate warmup steps", min=0, flag="--warmup-steps", group="training")
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    seed: int = option(0, "seed of the row order", group="training")
    checkpoint_every: int = option(50, "write a resumable checkpoint every N steps (0: never)", min=0)
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class LatentConfig(ModelOptions):
    """Latent-language analysis: per-layer probability of the target, English and source words."""

    src: str = option("fr", "source language code")
    tgt: str = option("zh", "target language code")
    task: str = option("translation", "translation, repetition or cloze", choices=("translation", "repetition", "cloze"))
    latent: str = option("en", "comma-separated latent languages to track")
    shots: int = option(4, "demonstrations per prompt", min=0)
    seed: int = option(0, "seed for choosing demonstrations", group="data")
    n: int | None = option(None, "use at most this many words (default: every usable word)", min=1)
    chat: str = chat_option()
    tuned_lens: str | None = tuned_lens_option()
    batch_size: int = option(8, "prompts per forward pass", min=1)
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the per-layer probabilities")
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class SaturationConfig(ModelOptions):
    """Layer saturation and early exit: when does each layer's top-1 already match the final one?"""

    data: str | None = data_option()
    text_field: str = text_field_option()
    tokens: int = option(4096, "tokens to analyse", min=1)
    context_length: int = option(128, "tokens per packed context, BOS included", min=2)
    batch_size: int = option(8, "sequences (packed contexts) per forward pass", min=1)
    tuned_lens: str | None = tuned_lens_option()
    out: str | None = out_option("write the per-layer table as .csv, "
                                 "or the whole result as .json (SaturationResult.load reads it)",
                                 suffixes=(".csv", ".json"))
    figures: str | None = figures_option("the saturation curves")
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class DecodingFlags:
    """The LFD / DoLa settings shared by ``interlayer generate`` and ``interlayer qa``."""

    alpha: float = option(0.25, "LFD: weight of the fusion layer (z_L + alpha * z_l*)", min=0)
    beta: float = option(0.1, "V_head: keep tokens with p_L >= beta * max p_L", above=0)
    candidates: str | None = option(None, "LFD: comma-separated candidate blocks (default: even blocks of the latter half)",
                                    parse=int_list)
    layer: int | None = option(None, "LFD: a fixed fusion block; DoLa: a fixed premature layer j (no selection)", min=0)
    fusion: str = option("logits", "LFD: fuse 'logits' (z_L + alpha z_l*) or 'hidden' (decode(h_L + alpha h_l*))",
                         choices=("logits", "hidden"))
    metric: str = option("jsd", "IKS: 'jsd' of decoded distributions or 'cosine' distance of states",
                         choices=("jsd", "cosine"))
    select: str = option("step", "LFD: choose the fusion layer every 'step' or once per 'example'",
                         choices=("step", "example"))
    dola_layers: str = option("high", "DoLa: 'high', 'low' or comma-separated layers j (0 = embeddings)")
    repetition_penalty: float | None = option(None, "repetition penalty (default: 1.2 for DoLa, none otherwise)", above=0)
    seed: int = option(0, "seed of lfd-random's layer choices")
    max_new_tokens: int = option(16, "tokens to generate at most", min=1)

    def decoding_options(self, decoding: str = "greedy") -> "Any":
        """The :class:`~interlayer.lens.fused_decoding.DecodingOptions` these flags set."""
        from .fused_decoding import DecodingOptions

        dola: Any = self.dola_layers
        if dola not in ("high", "low"):
            dola = _int_list(dola, "--dola-layers")
        return DecodingOptions(decoding=decoding, candidates=self.candidates, layer=self.layer, alpha=self.alpha,
                               beta=self.beta, fusion=self.fusion, metric=self.metric, select=self.select,
                               dola_layers=dola, repetition_penalty=self.repetition_penalty, seed=self.seed)


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InterlayerError(f"{flag} {text!r}: give 'high', 'low' or comma-separated integers") from None


@dataclass
class GenerateConfig(DecodingFlags, ModelOptions):
    """Generate with greedy, LFD or DoLa decoding; prints the text and the layer used at each step."""

    prompt: list[str] | None = option(None, "a prompt", required=True, repeat=True)
    decoding: str = option("greedy", "how each next token is picked", choices=("greedy", "lfd", "dola", "lfd-random"))
    chat: str = chat_option()
    tuned_lens: str | None = tuned_lens_option()
    batch_size: int = option(8, "prompts per forward pass", min=1)
    out: str | None = out_option("write what --json prints here: one prompt's generation (Generation.load reads it) "
                                 "or a list of them (Generation.load_all)", suffixes=(".json",))


@dataclass
class IKSConfig(ModelOptions):
    """IKS per layer while the model answers QA prompts, the fusion layer l* and the per-step choices."""

    dataset: str = option("nq", "nq, squad, known, or a .json/.jsonl QA records file")
    n: int = option(50, "questions", min=1)
    passage: bool = option(True, "put the gold passage in the prompt (--no-passage: closed book)")
    candidates: str | None = option(None, "comma-separated candidate blocks (default: even blocks of the latter half)",
                                    parse=int_list)
    metric: str = option("jsd", "'jsd' of decoded distributions or 'cosine' distance of states", choices=("jsd", "cosine"))
    select: str = option("step", "IKS at every decoding 'step', or once per 'example' (the prompt's last position)",
                         choices=("step", "example"))
    max_new_tokens: int = option(8, "decoding steps per question (select=step)", min=1)
    chat: str = chat_option()
    tuned_lens: str | None = tuned_lens_option()
    batch_size: int = option(4, "prompts per forward pass", min=1)
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the IKS per layer and the histogram of choices")
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class QAConfig(DecodingFlags, ModelOptions):
    """Closed- and open-book QA with greedy, LFD, DoLa and LFD-random decoding: exact match and answer-contained."""

    dataset: str = option("nq", "nq, squad, known, or a .json/.jsonl QA records file")
    n: int = option(100, "questions", min=1)
    decoding: str = option("greedy,lfd,dola,lfd-random", "comma-separated decodings")
    noise_docs: int = option(0, "passages of other questions added to the open-book context", min=0)
    seed: int = option(0, "seed of lfd-random's layer choices and of the noise passages")
    chat: str = chat_option()
    tuned_lens: str | None = tuned_lens_option()
    batch_size: int = option(8, "prompts per forward pass", min=1)
    out: str | None = out_option("write the result JSON here (finished batches are journalled to OUT.progress.jsonl; "
                                 "a rerun resumes)", suffixes=(".json",))
    figures: str | None = figures_option("the accuracy per decoding")
    no_progress: bool = option(False, "hide the progress bar")
