"""DoLa's pieces (Chuang et al. 2024, as ``transformers`` implemented it): the premature
layer buckets, the contrast of the final layer with the premature one on ``V_head``,
and the repetition penalty; the decoding loop is :mod:`interlayer.lens.fused_decoding`."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from interlayer.errors import InterlayerError, LayerIndexError, choices
from interlayer.layers import hidden_index_site
from interlayer.model.adapter import ModelAdapter

from .decoding_options import DOLA_BUCKETS
from .knowledge import jsd


def dola_layers(model: ModelAdapter, bucket: str | Sequence[int] = "high") -> list[int]:
    """DoLa's candidate premature layers ``j`` (blocks applied; 0 = the embeddings), as
    transformers chose them: ``low = range(start, N // 2, 2)``, ``high = range(N // 2, N, 2)``
    for ``N <= 40`` (``range(0, 20, 2)`` / ``range(N - 20, N, 2)`` above), ``start = 2`` when
    the input and output embeddings are tied (1 for two-layer, 0 for one-layer models)."""
    n = model.n_layers
    if not isinstance(bucket, str):
        out = sorted({int(j) for j in bucket})
        if not out:
            raise InterlayerError(f"the DoLa layer list is empty; give layers j in 0..{n - 1}")
        for j in out:
            if not 0 <= j < n:
                raise LayerIndexError(f"DoLa layer {j} is out of range; valid layers are 0..{n - 1} "
                                      "(j counts blocks applied: 0 is the embeddings)")
        return out
    tied = bool(getattr(model.model.config, "tie_word_embeddings", False))
    start = (2 if n > 2 else 1 if n == 2 else 0) if tied else 0
    if bucket == "low":
        if start == n // 2:
            return [start]
        low = list(range(start, n // 2, 2) if n <= 40 else range(start, 20, 2))
        if not low:
            raise InterlayerError(f"the DoLa bucket 'low' is empty for this {n}-layer model with tied embeddings "
                                  f"(it starts at layer {start}); give 'high' or a list of layers j in 0..{n - 1}")
        return low
    if bucket == "high":
        return list(range(n // 2, n, 2) if n <= 40 else range(n - 20, n, 2))
    raise InterlayerError(f"unknown DoLa bucket {bucket!r}; valid choices: {choices(DOLA_BUCKETS)} or a list of layers")


def dola_site(j: int) -> str:
    """The hook site of DoLa layer ``j`` (blocks applied: a hidden index, :mod:`interlayer.layers`)."""
    return hidden_index_site(j)


def head_mask(final_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """``V_head``: tokens whose final-layer probability is at least ``beta`` times the
    largest one (``[rows, vocab]`` bool); the top token is always in it."""
    logp = torch.log_softmax(final_logits.float(), -1)
    return logp >= logp.max(-1, keepdim=True).values + torch.log(torch.tensor(beta))


def repetition_penalty(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty: a seen token's score ``s`` becomes ``s · p`` if
    ``s < 0``, else ``s / p``."""
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, input_ids)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, input_ids, seen)


def dola_contrast(final: torch.Tensor, premature: torch.Tensor, layers: Sequence[int], beta: float
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor]]:
    """One DoLa step from the final logits ``[rows, vocab]`` and the logits decoded at each
    candidate layer ``j`` of ``layers`` (``premature``: ``[len(layers), rows, vocab]``):
    ``M = argmax_j JSD(q_N ‖ q_j)`` per row, the scores ``log q_N - log q_M`` on ``V_head``
    (``-inf`` elsewhere), ``M`` per row, and ``JSD(q_N ‖ q_j)`` per layer."""
    logq = torch.log_softmax(premature, -1).to(final.device)
    logq_n = torch.log_softmax(final, -1)
    div = jsd(logq_n[None].expand_as(logq), logq)  # [layers, rows]
    best = div.argmax(0)
    rows = torch.arange(final.shape[0])
    contrast = logq_n - logq[best, rows]
    chosen = torch.tensor(list(layers))[best.cpu()]
    return (contrast.masked_fill(~head_mask(final, beta), float("-inf")), chosen,
            {j: div[i].cpu() for i, j in enumerate(layers)})


__all__ = ["dola_contrast", "dola_layers", "dola_site", "head_mask", "repetition_penalty"]
