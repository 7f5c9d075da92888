"""Plain, slow reference computations that the fast paths are tested against.

``mexa_reference`` follows cisnlp/Mexa step by step: one sentence per forward pass
through Hugging Face with ``output_hidden_states=True`` (logits included), the
``weighted_embeddings`` pooling, and the mutual-nearest-neighbour rule as loops. As in
cisnlp/Mexa (``embed_extractor.py`` embeds each language's file once; ``compute_mexa.py``
loads the pivot's embeddings once and compares every language with them),
:func:`mexa_reference_languages` embeds every language, the pivot included, once.
"""

from __future__ import annotations

import numpy as np
import torch

from interlayer.model.adapter import ModelAdapter


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


def reference_corpus(model: ModelAdapter, sentences: list[str], pooling: str) -> list[list[np.ndarray]]:
    """Every sentence of one language embedded once, one forward pass each
    (cisnlp/Mexa's ``embed_extractor.py``): ``[sentence][hidden state] -> [d]``."""
    return [reference_embeddings(model, s, pooling) for s in sentences]


def mexa_reference_scores(pivot: list[list[np.ndarray]], other: list[list[np.ndarray]]) -> list[float]:
    """Per-layer MEXA scores from two languages' embeddings (cisnlp/Mexa's
    ``compute_mexa.py``): cosine similarities as loops, then the rule."""
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


def mexa_reference_languages(model: ModelAdapter, data: dict[str, list[str]], langs: list[str], pooling: str,
                             pivot: str = "eng_Latn") -> dict[str, list[float]]:
    """Per-layer MEXA scores of each language in ``langs`` against ``pivot``, with every
    language's sentences (``data[lang]``) embedded once, the pivot's included, as
    cisnlp/Mexa does: ``1 + len(langs)`` corpora, one forward pass per sentence."""
    pivot_embeddings = reference_corpus(model, data[pivot], pooling)
    return {lang: mexa_reference_scores(pivot_embeddings, reference_corpus(model, data[lang], pooling))
            for lang in langs}


def mexa_reference(model: ModelAdapter, pivot_sentences: list[str], sentences: list[str], pooling: str) -> list[float]:
    """Per-layer MEXA scores of one language against the pivot, one sentence per forward
    pass (both sides embedded here; for several languages use
    :func:`mexa_reference_languages`, which embeds the pivot once)."""
    return mexa_reference_scores(reference_corpus(model, pivot_sentences, pooling),
                                 reference_corpus(model, sentences, pooling))
