"""Internal consistency (Xie et al. 2024, "Calibrating Reasoning in Language Models
with Internal Consistency"; reference code zhxieml/internal-consistency).

1. Sample chain-of-thought paths (temperature 0.7, top-p 0.95) plus one greedy path.
2. Re-encode prompt + reasoning up to the answer trigger (``So the answer is``); at
   the position that predicts the answer, decode every hidden state (the embedding
   output and every layer; the last is the model's own output) through the lens,
   restricted to the label tokens: ``p_l(k) = softmax_k(log p_l(label_k))``.
3. Calibrate each layer: ``tau_{l,k}`` is the (K-1)/K quantile of ``p_l(k)`` over the
   dataset; ``s_{l,k} = 1[p_l(k) > tau_{l,k}] + (1/K) 1[p_l(k) = tau_{l,k}]``.
4. A path's answer is ``y = argmax_k s_{L,k}``; its internal consistency
   ``IC = sum_l s_{l,y}`` (also reported divided by the number of hidden states).
5. IC-weighted self-consistency: ``argmax_a sum_i IC_i 1[a_i = a]``.

Sampling goes through :mod:`interlayer.generation` (the one place a probe runs the model
itself); every activation comes from the store and every distribution from the
layer decoder.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from interlayer.progress import tqdm

from interlayer.store.collect import collect
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site
from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError
from interlayer.generation import Sampling, generate_texts
from interlayer.io.journal import Journal
from interlayer.intervals import PROBABILITY, bootstrap_interval, mean_interval, proportion_interval
from interlayer.layers import hidden_index, hidden_index_layers
from interlayer.results import Result, decode_array, encode_array, require

from .reasoning import DATASETS, LABELS, TRIGGER, Example, load_examples, reasoning_up_to_answer

def calibrate_label_scores(probs: torch.Tensor) -> torch.Tensor:
    """``[n, layers, K]`` label probabilities -> calibrated scores ``s_{l,k}``:
    1 above the (K-1)/K quantile of that layer and label over the dataset, 1/K at it, else 0.
    (Named apart from :func:`interlayer.steering.calibrate_strength`.)"""
    k = probs.shape[-1]
    tau = torch.quantile(probs.double(), (k - 1) / k, dim=0, keepdim=True)
    p = probs.double()
    return (p > tau).double() + (p == tau).double() / k


def calibrate(probs: torch.Tensor) -> torch.Tensor:
    """Deprecated name of :func:`calibrate_label_scores` (one release; it clashed with the steering strength search)."""
    warnings.warn("interlayer.probes.calibrate is renamed calibrate_label_scores", DeprecationWarning, stacklevel=2)
    return calibrate_label_scores(probs)


def consistency_scores(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_hat [n], IC [n])`` from calibrated scores ``[n, layers, K]``:
    ``y_hat = argmax_k s_{L,k}``, ``IC = sum_l s_{l, y_hat}``."""
    y_hat = scores[:, -1].argmax(-1)
    ic = scores.gather(2, y_hat[:, None, None].expand(-1, scores.shape[1], 1))[..., 0].sum(1)
    return y_hat, ic


def weighted_vote(answers: Sequence[int], weights: Sequence[float], n_labels: int) -> int:
    """``argmax_a sum_i w_i 1[a_i = a]`` (the lowest label wins a tie)."""
    totals = np.zeros(n_labels)
    for a, w in zip(answers, weights):
        totals[int(a)] += float(w)
    return int(np.argmax(totals))


@dataclass
class ConsistencyResult(Result):
    """Accuracies against the number of paths (with 95% Wilson intervals over questions),
    IC's AUROC (with a 95% bootstrap interval over paths) and the per-layer agreement.

    The label probabilities are read at every hidden state 0..L: ``layers`` holds the
    block index of each (``None`` for the embeddings; :mod:`interlayer.layers`). A
    count of hidden states is accepted and made into that list."""

    model: str
    dataset: str
    labels: tuple[str, ...]
    n: int
    paths: int
    layers: list[int | None]
    greedy_accuracy: float
    sc_accuracy: list[float]
    """Self-consistency accuracy with the first 1..paths sampled paths."""
    ic_accuracy: list[float]
    """IC-weighted self-consistency accuracy with the first 1..paths paths."""
    auroc: float
    """AUROC of IC for telling correct sampled paths from incorrect ones (NaN if one class is empty)."""
    ic: np.ndarray
    """``[n, paths]`` IC of every sampled path."""
    correct: np.ndarray
    """``[n, paths]`` whether each path's answer is right."""
    agreement_correct: list[float]
    agreement_incorrect: list[float]
    texts: list[list[str]] = field(default_factory=list)
    auroc_ci: tuple[float, float] | None = None
    """95% percentile-bootstrap interval of the AUROC over sampled paths (None when undefined)."""
    agreement_correct_ci: tuple[list[float], list[float]] | None = None
    """Per hidden state, the 95% bootstrap interval of ``agreement_correct`` over the correct paths."""

    def __post_init__(self) -> None:
        if isinstance(self.layers, int):
            self.layers = hidden_index_layers(self.layers)

    def _wilson(self, accuracy: float) -> tuple[float, float]:
        return proportion_interval(round(accuracy * self.n), self.n)

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer probes consistency --out``, with the per-path arrays
        (``ic``, ``correct``) and texts that :meth:`load` rebuilds from."""
        return {
            "model": self.model, "dataset": self.dataset, "labels": list(self.labels), "n": self.n,
            "paths": self.paths, "layers": self.layers, "hidden_index": [hidden_index(l) for l in self.layers],
            "greedy_accuracy": self.greedy_accuracy, "greedy_accuracy_ci": list(self._wilson(self.greedy_accuracy)),
            "self_consistency_accuracy": self.sc_accuracy, "ic_weighted_accuracy": self.ic_accuracy,
            "auroc": None if math.isnan(self.auroc) else self.auroc,
            "auroc_ci": None if self.auroc_ci is None or math.isnan(self.auroc_ci[0]) else list(self.auroc_ci),
            "ic_mean": float(self.ic.mean()), "ic_normalised_mean": float(self.ic.mean() / len(self.layers)),
            "ic_mean_correct": float(self.ic[self.correct].mean()) if self.correct.any() else None,
            "ic_mean_incorrect": float(self.ic[~self.correct].mean()) if (~self.correct).any() else None,
            "path_accuracy": float(self.correct.mean()),
            "agreement": {"correct": self.agreement_correct, "incorrect": self.agreement_incorrect,
                          **({"correct_low": list(self.agreement_correct_ci[0]), "correct_high": list(self.agreement_correct_ci[1])}
                             if self.agreement_correct_ci is not None else {})},
            "ic": encode_array(self.ic), "correct": encode_array(self.correct), "texts": self.texts,
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "ConsistencyResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "dataset", "labels", "n", "paths", "layers", "greedy_accuracy", "ic", "correct",
                what="ConsistencyResult")
        auroc, ci = payload.get("auroc"), payload.get("auroc_ci")
        return cls(model=payload["model"], dataset=payload["dataset"], labels=tuple(payload["labels"]),
                   n=int(payload["n"]), paths=int(payload["paths"]), layers=payload["layers"],
                   greedy_accuracy=float(payload["greedy_accuracy"]),
                   sc_accuracy=[float(v) for v in payload["self_consistency_accuracy"]],
                   ic_accuracy=[float(v) for v in payload["ic_weighted_accuracy"]],
                   auroc=math.nan if auroc is None else float(auroc), ic=decode_array(payload["ic"]),
                   correct=decode_array(payload["correct"]),
                   agreement_correct=list(payload["agreement"]["correct"]),
                   agreement_incorrect=list(payload["agreement"]["incorrect"]),
                   texts=[list(t) for t in payload.get("texts", [])], auroc_ci=None if ci is None else tuple(ci),
                   agreement_correct_ci=_agreement_ci(payload["agreement"]))

    def headline(self) -> dict[str, Any]:
        """Questions, paths, the three accuracies and the AUROC with their intervals."""
        def cell(value: float, ci: Sequence[float] | None) -> str:
            return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci is not None and not math.isnan(ci[0]) else "")

        return {"model": self.model, "dataset": self.dataset, "questions": self.n, "paths": self.paths,
                "greedy accuracy": cell(self.greedy_accuracy, self._wilson(self.greedy_accuracy)),
                "self-consistency": cell(self.sc_accuracy[-1], self._wilson(self.sc_accuracy[-1])),
                "IC-weighted": cell(self.ic_accuracy[-1], self._wilson(self.ic_accuracy[-1])),
                "AUROC": "undefined" if math.isnan(self.auroc) else cell(self.auroc, self.auroc_ci)}

    def to_frame(self) -> pd.DataFrame:
        """Per number of paths: the three accuracies and their 95% Wilson intervals over questions."""
        frame = pd.DataFrame({"paths": range(1, self.paths + 1), "self_consistency": self.sc_accuracy,
                              "ic_weighted": self.ic_accuracy, "greedy": [self.greedy_accuracy] * self.paths})
        for column in ("self_consistency", "ic_weighted", "greedy"):
            bounds = [self._wilson(v) for v in frame[column]]
            frame[f"{column}_low"], frame[f"{column}_high"] = [b[0] for b in bounds], [b[1] for b in bounds]
        return frame

    def plot(self) -> go.Figure:
        """Accuracy against paths (95% Wilson intervals) and the per-hidden-state agreement."""
        fig = make_subplots(rows=1, cols=2, subplot_titles=("accuracy vs paths", "per-layer agreement with the answer"))
        frame = self.to_frame()
        for column in ("greedy", "self_consistency", "ic_weighted"):
            fig.add_trace(go.Scatter(x=frame.paths, y=frame[column], name=column, error_y={
                "type": "data", "symmetric": False, "array": frame[f"{column}_high"] - frame[column],
                "arrayminus": frame[column] - frame[f"{column}_low"]}), 1, 1)
        index = [hidden_index(l) for l in self.layers]
        fig.add_trace(go.Scatter(x=index[:len(self.agreement_correct)], y=self.agreement_correct,
                                 name="correct paths"), 1, 2)
        fig.add_trace(go.Scatter(x=index[:len(self.agreement_incorrect)], y=self.agreement_incorrect,
                                 name="incorrect paths"), 1, 2)
        fig.update_xaxes(title_text="paths", row=1, col=1)
        fig.update_xaxes(title_text="hidden state (0 = embeddings)", row=1, col=2)
        fig.update_layout(title=html.escape(f"Internal consistency: {self.model} on {self.dataset} (n={self.n})"))
        return fig


def label_token_ids(model: ModelAdapter, labels: Sequence[str]) -> list[int]:
    """The first token of " <label>" for each label; they must differ."""
    ids = [model.tokenizer(" " + label, add_special_tokens=False).input_ids[0] for label in labels]
    if len(set(ids)) != len(ids):
        raise InterlayerError(f"labels {list(labels)} share a first token in this tokenizer; they cannot be told apart")
    return ids


def label_probabilities(model: ModelAdapter, texts: Sequence[str], label_ids: Sequence[int], *,
                        lens: Lens = LOGIT_LENS, batch_size: int = 8) -> torch.Tensor:
    """``[n, L+1, K]``: at each text's last position, every hidden state decoded and
    renormalised over the label tokens. The embedding output (``resid_pre.0``) has no
    lens layer and decodes through the logit lens; the layers decode through ``lens``."""
    sites = [Site(0, "resid_pre").name] + [Site(l, "resid_post").name for l in range(model.n_layers)]
    acts = collect(model, list(texts), sites, select="last", batch_size=batch_size, progress=False)
    hidden = acts.stack(sites)
    embedding = LayerDecoder(model).decode(hidden[:1], token_ids=label_ids).token_logprobs
    layers = LayerDecoder(model, lens=lens).decode(hidden[1:], token_ids=label_ids,
                                                   layers=list(range(model.n_layers))).token_logprobs
    return torch.softmax(torch.cat([embedding, layers]), dim=-1).permute(1, 0, 2)  # [n, L+1, K]


def _generate(model: ModelAdapter, prompt: str, paths: int, max_new_tokens: int, temperature: float, top_p: float,
              seed: int) -> tuple[str, list[str]]:
    """The greedy path and ``paths`` sampled ones (:mod:`interlayer.generation`; the seed is set before sampling)."""
    greedy = generate_texts(model, [prompt], max_new_tokens=max_new_tokens)[0]
    sampled = generate_texts(model, [prompt], max_new_tokens=max_new_tokens, paths=paths,
                             sampling=Sampling(temperature=temperature, top_p=top_p, top_k=0, seed=seed))
    return greedy, sampled


def internal_consistency(model: ModelAdapter, examples: Sequence[Example], labels: Sequence[str], *, paths: int = 5,
                         dataset: str = "custom", max_new_tokens: int = 96, temperature: float = 0.7,
                         top_p: float = 0.95, seed: int = 0, trigger: str = TRIGGER, lens: Lens = LOGIT_LENS,
                         journal: str | None = None, progress: bool = True) -> ConsistencyResult:
    """Run the whole protocol of the module docstring on ``examples``.

    With ``journal`` (a ``.jsonl`` path: a resume journal, :class:`interlayer.io.journal.Journal`),
    each question's sampled paths are journalled as soon as they exist, and a rerun with the
    same settings reuses them, so an interrupted run loses at most the question in progress;
    a journal of other settings is refused.
    """
    if paths < 1:
        raise InterlayerError(f"paths must be at least 1, got {paths}")
    if len(examples) < 2:
        raise InterlayerError(f"need at least 2 examples, got {len(examples)}")
    label_index = {label: i for i, label in enumerate(labels)}
    unknown = {e.answer for e in examples} - set(label_index)
    if unknown:
        raise InterlayerError(f"gold answers {sorted(unknown)} are not among the labels {list(labels)}")
    label_ids = label_token_ids(model, labels)
    settings = {"model": model.name, "paths": paths, "max_new_tokens": max_new_tokens, "temperature": temperature,
                "top_p": top_p, "seed": seed}
    generated = _sample_paths(model, examples, settings, None if journal is None else Journal(journal, settings),
                              progress)
    texts = [e.prompt + reasoning_up_to_answer(g, trigger) for e, path in zip(examples, generated) for g in path]
    probs = label_probabilities(model, texts, label_ids, lens=lens)  # [n*(1+paths), L+1, K]
    scores = calibrate_label_scores(probs)
    y_hat, ic = consistency_scores(scores)
    n, per = len(examples), 1 + paths
    y_hat, ic = y_hat.view(n, per), ic.view(n, per)
    gold = torch.tensor([label_index[e.answer] for e in examples])
    correct = (y_hat == gold[:, None]).numpy()
    sampled_ic, sampled_answers, sampled_correct = ic[:, 1:].numpy(), y_hat[:, 1:].numpy(), correct[:, 1:]
    sc, weighted = [], []
    for k in range(1, paths + 1):
        sc.append(float(np.mean([weighted_vote(sampled_answers[q, :k], [1.0] * k, len(labels)) == gold[q]
                                  for q in range(n)])))
        weighted.append(float(np.mean([weighted_vote(sampled_answers[q, :k], sampled_ic[q, :k], len(labels)) == gold[q]
                                        for q in range(n)])))
    auroc, auroc_ci = _auroc(sampled_correct.reshape(-1), sampled_ic.reshape(-1))
    agree_correct, agree_wrong, agree_ci = _agreement(scores, y_hat, correct)
    return ConsistencyResult(
        model=model.name, dataset=dataset, labels=tuple(labels), n=n, paths=paths,
        layers=hidden_index_layers(int(scores.shape[1])), greedy_accuracy=float(correct[:, 0].mean()), sc_accuracy=sc,
        ic_accuracy=weighted, auroc=auroc, ic=sampled_ic, correct=sampled_correct, agreement_correct=agree_correct,
        agreement_incorrect=agree_wrong, texts=generated, auroc_ci=auroc_ci, agreement_correct_ci=agree_ci,
    )


def _sample_paths(model: ModelAdapter, examples: Sequence[Example], settings: dict[str, Any],
                  journal: Journal | None, progress: bool) -> list[list[str]]:
    """Each question's greedy path then its sampled paths; those in ``journal`` are reused,
    new ones journalled (keyed by the question's index and prompt)."""
    done = {} if journal is None else journal.done()
    generated = []
    for i, example in enumerate(tqdm(examples, desc="sampling", disable=not progress)):
        key = f"{i}:{example.prompt}"
        if key in done:
            greedy, *sampled = done[key]
        else:
            greedy, sampled = _generate(model, example.prompt, settings["paths"], settings["max_new_tokens"],
                                        settings["temperature"], settings["top_p"], settings["seed"] + i)
            if journal is not None:
                journal.append(key, [greedy, *sampled])
        generated.append([greedy, *sampled])
    return generated


def _auroc(correct: np.ndarray, ic: np.ndarray) -> tuple[float, tuple[float, float] | None]:
    """AUROC of IC for telling correct paths from incorrect ones, with its 95% bootstrap
    interval over paths (NaN and ``None`` when one class is empty)."""
    from sklearn.metrics import roc_auc_score

    def paired_auroc(y: np.ndarray, s: np.ndarray) -> float:
        return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")

    auroc = paired_auroc(correct, ic)
    if math.isnan(auroc):
        return auroc, None
    return auroc, bootstrap_interval(paired_auroc, (correct, ic), bounds=PROBABILITY, n_resamples=1000)


def _agreement(scores: torch.Tensor, y_hat: torch.Tensor,
               correct: np.ndarray) -> tuple[list[float], list[float], tuple[list[float], list[float]] | None]:
    """Per hidden state, the mean calibrated score of each sampled path's answer, over the
    correct and over the incorrect paths (the greedy path of each question left out), and
    the 95% bootstrap interval of the first over the correct paths."""
    n, per = y_hat.shape
    per_layer = scores.gather(2, y_hat.reshape(-1)[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]  # [n*per, L+1]
    sampled_rows = torch.ones(n, per, dtype=torch.bool)
    sampled_rows[:, 0] = False
    mask_correct = torch.from_numpy(correct.reshape(-1)) & sampled_rows.view(-1)
    mask_wrong = ~torch.from_numpy(correct.reshape(-1)) & sampled_rows.view(-1)
    agree = lambda m: per_layer[m].mean(0).tolist() if m.any() else []  # noqa: E731
    ci = None
    if mask_correct.any():
        low, high = mean_interval(per_layer[mask_correct].double().numpy(), bounds=PROBABILITY)
        ci = (low.tolist(), high.tolist())
    return agree(mask_correct), agree(mask_wrong), ci


def _agreement_ci(agreement: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    if "correct_low" not in agreement:
        return None
    return list(agreement["correct_low"]), list(agreement["correct_high"])


__all__ = ["DATASETS", "LABELS", "TRIGGER", "ConsistencyResult", "Example", "calibrate", "calibrate_label_scores",
           "consistency_scores", "internal_consistency", "label_probabilities", "label_token_ids", "load_examples",
           "reasoning_up_to_answer", "weighted_vote"]
