"""Configs of the lens commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from interlayer.config import ModelOptions, option
from interlayer.errors import InterlayerError


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


@dataclass
class DecodingFlags:
    """The LFD / DoLa settings shared by ``interlayer generate`` and ``interlayer qa``."""

    alpha: float = option(0.25, "LFD: weight of the fusion layer (z_L + alpha * z_l*)", min=0)
    beta: float = option(0.1, "V_head: keep tokens with p_L >= beta * max p_L", above=0)
    candidates: str | None = option(None, "LFD: comma-separated candidate blocks (default: even blocks of the latter half)")
    layer: int | None = option(None, "LFD: a fixed fusion block; DoLa: a fixed premature layer j (no selection)", min=0)
    fusion: str = option("logits", "LFD: fuse 'logits' (z_L + alpha z_l*) or 'hidden' (decode(h_L + alpha h_l*))",
                         choices=("logits", "hidden"))
    metric: str = option("jsd", "IKS: 'jsd' of decoded distributions or 'cosine' distance of states",
                         choices=("jsd", "cosine"))
    select: str = option("step", "LFD: choose the fusion layer every 'step' or once per 'example'",
                         choices=("step", "example"))
    dola_layers: str = option("high", "DoLa: 'high', 'low' or comma-separated layers j (0 = embeddings)")
    repetition_penalty: float | None = option(None, "repetition penalty (default: 1.2 for DoLa, none otherwise)", above=0)
    seed: int = option(0, "seed of lfd-random's layer choices (and of qa's noise passages)")
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

    prompt: str | None = option(None, "the prompt", positional=True)
    decoding: str = option("greedy", "how each next token is picked", choices=("greedy", "lfd", "dola", "lfd-random"))
    chat: str = option("no", "wrap the prompt in the model's chat template: auto, yes or no", choices=("auto", "yes", "no"))
    json: bool = option(False, "print JSON (tokens, text, and per step the layer and its scores)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.candidates is not None:
            _int_list(self.candidates, "--candidates")


@dataclass
class IKSConfig(ModelOptions):
    """IKS per layer while the model answers QA prompts, the fusion layer l* and the per-step choices."""

    data: str = option("nq", "nq, squad, known, or a .json/.jsonl QA file")
    n: int = option(50, "questions", min=1)
    passage: bool = option(True, "put the gold passage in the prompt (--no-passage: closed book)")
    out: str | None = option(None, "write the result JSON here", suffixes=(".json",))
    figure: str | None = option(None, "write the plotly figure (IKS per layer, histogram of choices) here", suffixes=(".html",))
    candidates: str | None = option(None, "comma-separated candidate blocks (default: even blocks of the latter half)")
    metric: str = option("jsd", "'jsd' of decoded distributions or 'cosine' distance of states", choices=("jsd", "cosine"))
    select: str = option("step", "IKS at every decoding 'step', or once per 'example' (the prompt's last position)",
                         choices=("step", "example"))
    max_new_tokens: int = option(8, "decoding steps per question (select=step)", min=1)
    chat: str = option("auto", "chat template: auto (instruct models), yes or no", choices=("auto", "yes", "no"))
    batch_size: int = option(4, "prompts per generation batch", min=1)
    no_progress: bool = option(False, "hide the progress bar")


@dataclass
class QAConfig(DecodingFlags, ModelOptions):
    """Closed- and open-book QA with greedy, LFD, DoLa and LFD-random decoding: exact match and answer-contained."""

    data: str = option("nq", "nq, squad, known, or a .json/.jsonl QA file")
    n: int = option(100, "questions", min=1)
    decoding: str = option("greedy,lfd,dola,lfd-random", "comma-separated decodings")
    noise_docs: int = option(0, "passages of other questions added to the open-book context", min=0)
    out: str | None = option(None, "write the result JSON here (progress is kept in OUT.progress.jsonl)",
                             suffixes=(".json",))
    chat: str = option("auto", "chat template: auto (instruct models), yes or no", choices=("auto", "yes", "no"))
    batch_size: int = option(8, "prompts per generation batch", min=1)
    no_progress: bool = option(False, "hide the progress bar")
