"""Top-activating contexts: for the most active latents of an SAE, the tokens where each
fires most strongly, with the text around them (the usual first look at what a latent
reads; e.g. Bricken et al. 2023, "Towards Monosemanticity").

The activations come from the store; the SAE encodes them; nothing else runs.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from interlayer.model.adapter import ModelAdapter
from interlayer.errors import InterlayerError
from interlayer.store import contexts_for_tokens
from interlayer.store.collect import Activations, collect

from .sae import SAE

__all__ = ["top_contexts"]


def top_contexts(sae: SAE, model: ModelAdapter, data: Any, site: str | None = None, *, tokens: int = 8192,
                 context_length: int = 128, latents: int = 3, per_latent: int = 5, window: int = 8,
                 batch_size: int = 8, text_field: str = "text") -> pd.DataFrame:
    """The ``per_latent`` strongest activations of the ``latents`` latents with the highest
    maximum activation on ``data`` (any store input), each with up to ``window`` tokens
    either side within its own context (the activating token in ``[brackets]``).

    Args:
        sae: the SAE whose latents are read.
        model: the model it reads.
        data: text, token ids or a dataset, packed into contexts of ``context_length``.
        site: the hook site (default: the SAE config's site).
        tokens: the token budget: the whole contexts it fills, ``max(1, tokens // n)`` of ``n`` text
            tokens each (:func:`interlayer.store.contexts_for_tokens` with ``whole=True``).
        latents: how many latents (ranked by their maximum activation).
        per_latent: how many activations of each, strongest first.
        window: tokens of context on each side.

    Returns one row per activation: ``latent``, ``activation``, ``context``.
    """
    site = site or sae.cfg.site
    if not site:
        raise InterlayerError("the SAE names no hook site; pass site=")
    for name, value in (("tokens", tokens), ("latents", latents), ("per_latent", per_latent)):
        if value < 1:
            raise InterlayerError(f"{name} must be at least 1, got {value}")
    if window < 0:
        raise InterlayerError(f"window must be at least 0, got {window}")
    limit = contexts_for_tokens(model, tokens, context_length, whole=True)
    acts = collect(model, data, site, context_length=context_length, limit=limit,
                   batch_size=batch_size, text_field=text_field, progress=False)
    with torch.no_grad():
        codes = sae.encode(acts[site].to(model.device)).float().cpu()
    order = torch.argsort(codes.max(0).values, descending=True)[:latents]
    rows = []
    for latent in order.tolist():
        values, index = torch.topk(codes[:, latent], min(per_latent, codes.shape[0]))
        for value, row in zip(values.tolist(), index.tolist()):
            rows.append({"latent": latent, "activation": value, "context": _context(model, acts, row, window)})
    return pd.DataFrame(rows)


def _context(model: ModelAdapter, acts: Activations, row: int, window: int) -> str:
    """The text of ``row``'s context within ``window`` tokens either side, the row's token bracketed."""
    meta = acts.meta
    same = (meta["sequence"] == meta["sequence"][row]).nonzero()[:, 0]
    lo, hi = max(int(same.min()), row - window), min(int(same.max()), row + window)
    pieces = model.token_strings(meta["token_id"][lo:hi + 1].tolist())
    pieces[row - lo] = f"[{pieces[row - lo]}]"
    return "".join(pieces)
