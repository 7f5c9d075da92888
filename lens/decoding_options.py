"""How :func:`interlayer.lens.generate` picks each next token: the option group of
greedy, LFD, DoLa and LFD-random decoding (the formulas are in
:mod:`interlayer.lens.fused_decoding`).

The fields are :func:`~interlayer.options.option` fields, so one declaration is the
Python API's documentation and checks, and the command line's flags and ``--help``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from interlayer.errors import InterlayerError, choices
from interlayer.options import Options, int_list, option

IKS_METRICS: tuple[str, ...] = ("jsd", "cosine")
"""How the IKS compares the two sides of a block's FFN (:func:`interlayer.lens.knowledge.iks`)."""
FUSION_SELECTIONS: tuple[str, ...] = ("step", "example")
"""When LFD chooses its fusion layer: at every decoding ``step``, or once per ``example``."""
DECODINGS: tuple[str, ...] = ("greedy", "lfd", "dola", "lfd-random")
FUSIONS: tuple[str, ...] = ("logits", "hidden")
DOLA_BUCKETS: tuple[str, ...] = ("high", "low")
DEFAULT_ALPHA = 0.25
"""LFD's default α, chosen on a held-out split (see the README's knowledge findings and
``benchmarks/knowledge_alpha.py``)."""
DEFAULT_BETA = 0.1
DOLA_REPETITION_PENALTY = 1.2


def candidate_list(text: str) -> list[int] | None:
    """LFD candidates given as text: comma-separated blocks, or ``"default"`` (``None``)."""
    return None if text == "default" else int_list(text)


def dola_layer_list(text: str) -> list[int]:
    """DoLa layers given as text: comma-separated layers ``j`` (a bucket name is not a list)."""
    try:
        return int_list(text)
    except InterlayerError:
        raise InterlayerError(f"unknown DoLa bucket {text!r}; valid choices: {choices(DOLA_BUCKETS)} "
                              "or comma-separated layers") from None


def dola_spec(text: str) -> str | list[int]:
    """``--dola-layers``: a bucket (``high``, ``low``) or comma-separated layers ``j``."""
    return text if text in DOLA_BUCKETS else dola_layer_list(text)


@dataclass
class DecodingOptions(Options):
    """How :func:`~interlayer.lens.generate` picks each next token (see
    :mod:`interlayer.lens.fused_decoding`): the option group of ``lens generate`` and
    ``lens qa`` (``max_new_tokens`` is an argument of :func:`~interlayer.lens.generate`)."""

    decoding: str = option("greedy", "how each next token is picked", choices=DECODINGS)
    candidates: str | Sequence[int] | None = option(
        None, "LFD: comma-separated candidate blocks (default: even blocks of the latter half)", parse=candidate_list)
    layer: int | None = option(None, "LFD: a fixed fusion block; DoLa: a fixed premature layer j (no selection)", min=0)
    alpha: float = option(DEFAULT_ALPHA, "LFD: weight of the fusion layer (z_L + alpha * z_l*)", min=0)
    beta: float = option(DEFAULT_BETA, "V_head: keep tokens with p_L >= beta * max p_L", above=0)
    fusion: str = option("logits", "LFD: fuse 'logits' (z_L + alpha z_l*) or 'hidden' (decode(h_L + alpha h_l*))",
                         choices=FUSIONS)
    metric: str = option("jsd", "IKS: 'jsd' of decoded distributions or 'cosine' distance of states",
                         choices=IKS_METRICS)
    select: str = option("step", "LFD: choose the fusion layer every 'step' or once per 'example'",
                         choices=FUSION_SELECTIONS)
    dola_layers: str | Sequence[int] = option("high", "DoLa: 'high', 'low' or comma-separated layers j (0 = embeddings)",
                                              parse=dola_spec)
    repetition_penalty: float | None = option(None, "repetition penalty (default: 1.2 for DoLa, none otherwise)",
                                              above=0)
    seed: int = option(0, "seed of lfd-random's layer choices")
    record: Sequence[int] | None = option(None, "blocks whose IKS to record at every step (default: the candidates, "
                                          "for LFD)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # the declared bounds and choices
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)):
                raise InterlayerError(f"{name} must be a number, got {value!r}")
        if not self.beta <= 1:
            raise InterlayerError(f"beta must lie in (0, 1], got {self.beta!r}")
        if isinstance(self.dola_layers, str) and self.dola_layers not in DOLA_BUCKETS:
            self.dola_layers = dola_layer_list(self.dola_layers)

    @property
    def penalty(self) -> float:
        """The repetition penalty in force: the given one, else 1.2 for DoLa and 1 (none) otherwise."""
        if self.repetition_penalty is not None:
            return float(self.repetition_penalty)
        return DOLA_REPETITION_PENALTY if self.decoding == "dola" else 1.0


__all__ = ["DECODINGS", "DEFAULT_ALPHA", "DEFAULT_BETA", "DOLA_BUCKETS", "DOLA_REPETITION_PENALTY", "DecodingOptions",
           "FUSIONS", "FUSION_SELECTIONS", "IKS_METRICS", "candidate_list", "dola_layer_list", "dola_spec"]
