"""Plain, slow reference computations that the fast paths are tested against.

``mexa_reference`` follows cisnlp/Mexa step by step: one sentence per forward pass
through Hugging Face with ``output_hidden_states=True`` (logits included), the
``weighted_embeddings`` pooling, and the mutual-nearest-neighbour rule as loops.
"""

from __future__ import annotations

import numpy as np
import torch

from interlayer.adapter import ModelAdapter


def reference_embeddings(model: ModelAdapter, sentence: str, pooling: str) -> list[np.ndarray]:
    """One embedding per hidden state for one sentence, as cisnlp/Mexa computes it."""
    tokens = model.tokenizer(sentence, return_tensors="pt")
    mask = tokens["attention_mask"]
    if pooling == "last":
        mask = torch.zeros_like(mask)
        mask[:, -1] = 1
    with torch.no_grad():
        hidden_states = model.model(**tokens, output_hidden_states=True).hidden_states
    out = []
    for layer in hidden_states:
        weights = mask * torch.arange(1, layer.shape[1] + 1).unsqueeze(0)
        pooled = (layer * weights.unsqueeze(-1)).sum(1) / weights.sum(-1).unsqueeze(-1)
        out.append(pooled[0].double().numpy())
    return out


def mexa_rule_reference(matrix: np.ndarray) -> float:
    """Hits / N, with the rule written out: strictly greater than the rest of row and column."""
    n = len(matrix)
    hits = 0
    for i in range(n):
        row = np.delete(matrix[i], i)
        column = np.delete(matrix[:, i], i)
        if matrix[i, i] > row.max() and matrix[i, i] > column.max():
            hits += 1
    return hits / n


def mexa_reference(model: ModelAdapter, pivot_sentences: list[str], sentences: list[str], pooling: str) -> list[float]:
    """Per-layer MEXA scores, one sentence per forward pass."""
    pivot = [reference_embeddings(model, s, pooling) for s in pivot_sentences]
    other = [reference_embeddings(model, s, pooling) for s in sentences]
    scores = []
    for layer in range(len(pivot[0])):
        a = np.stack([p[layer] for p in pivot])
        b = np.stack([o[layer] for o in other])
        sim = np.zeros((len(a), len(b)))
        for i in range(len(a)):
            for j in range(len(b)):
                sim[i, j] = a[i] @ b[j] / (np.linalg.norm(a[i]) * np.linalg.norm(b[j]))
        scores.append(mexa_rule_reference(sim))
    return scores
