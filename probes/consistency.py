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

Sampling calls the model's ``generate`` (the one place a probe runs the model
itself); every activation comes from the store and every distribution from the
layer decoder.
"""

from __future__ import annotations

import html
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from tqdm.auto import tqdm

from interlayer.store.collect import collect
from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError, choices
from interlayer.intervals import PROBABILITY, bootstrap_interval, proportion_interval
from interlayer.layers import hidden_index, hidden_index_layers
from interlayer.results import Result, decode_array, encode_array, require

DATASETS: tuple[str, ...] = ("coinflip", "prontoqa", "proofwriter", "boolq")
LABELS: dict[str, tuple[str, ...]] = {"coinflip": ("yes", "no"), "boolq": ("yes", "no"),
                                      "prontoqa": ("True", "False"), "proofwriter": ("True", "False")}
TRIGGER = "So the answer is"

# Few-shot chain-of-thought demonstrations, written for interlayer.
_COINFLIP_SHOTS = [
    ('A coin is heads up. Maria flips the coin. Tom does not flip the coin. Is the coin still heads up? '
     'Note that "flip" here means "reverse".',
     "The coin starts heads up. Maria flips it, so it is tails up. Tom does not flip it, so it stays tails up.", "no"),
    ('A coin is heads up. Ken does not flip the coin. Lea flips the coin. Omar flips the coin. Is the coin still '
     'heads up? Note that "flip" here means "reverse".',
     "The coin starts heads up. Ken does not flip it, so it stays heads up. Lea flips it, so it is tails up. "
     "Omar flips it, so it is heads up again.", "yes"),
    ('A coin is heads up. Ivy does not flip the coin. Sam does not flip the coin. Is the coin still heads up? '
     'Note that "flip" here means "reverse".',
     "The coin starts heads up. Nobody flips it, so it stays heads up.", "yes"),
]
_BOOLQ_SHOTS = [
    ("The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea.",
     "does the nile flow into the mediterranean sea",
     "The passage says the Nile flows into the Mediterranean Sea.", "yes"),
    ("Penguins are a group of aquatic flightless birds. They live almost exclusively in the Southern Hemisphere.",
     "can penguins fly",
     "The passage says penguins are flightless birds, so they cannot fly.", "no"),
    ("A leap year has 366 days instead of 365, with February 29 added as the extra day.",
     "does a leap year have 365 days",
     "The passage says a leap year has 366 days, not 365.", "no"),
]


@dataclass
class Example:
    """One question: the few-shot prompt (ending with ``A:``) and its gold label."""

    prompt: str
    answer: str


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    path = resources.files("interlayer.probes").joinpath(f"data/reasoning/{name}.jsonl")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_examples(dataset: str, n: int | None = None) -> list[Example]:
    """The first ``n`` questions of a packaged dataset, as few-shot CoT prompts."""
    if dataset not in DATASETS:
        raise InterlayerError(f"unknown dataset {dataset!r}; valid datasets: {choices(DATASETS)}")
    if n is not None and (not isinstance(n, int) or n < 2):
        raise InterlayerError(f"n must be an integer of at least 2 (questions), got {n!r}")
    rows = _read_jsonl(dataset)[:n]
    out = []
    for row in rows:
        if row.get("answer") in (None, ""):
            raise InterlayerError(f"{dataset} has an example without a label: {str(row)[:80]}")
        if dataset == "coinflip":
            shots = "".join(f"Q: {q}\nA: {r} {TRIGGER} {a}.\n\n" for q, r, a in _COINFLIP_SHOTS)
            prompt = f"{shots}Q: {row['question']}\nA:"
        elif dataset == "boolq":
            shots = "".join(f"Passage: {p}\nQ: {q}?\nA: {r} {TRIGGER} {a}.\n\n" for p, q, r, a in _BOOLQ_SHOTS)
            prompt = f"{shots}Passage: {row['passage']}\nQ: {row['question']}?\nA:"
        else:
            shots = "".join(f"Q: {e['question']} {e['query']}\nA: {' '.join(e['chain_of_thought'])} {TRIGGER} "
                            f"{e['answer']}.\n\n" for e in row["examples"])
            prompt = f"{shots}Q: {row['context']} {row['question']}\nA:"
        out.append(Example(prompt, str(row["answer"])))
    if len(out) < 2:
        raise InterlayerError(f"{dataset}: need at least 2 examples, got {len(out)}")
    return out


def reasoning_up_to_answer(generated: str, trigger: str = TRIGGER) -> str:
    """The reasoning of a sampled path, cut where the answer would start, ending in ``trigger``.

    Paths that never say the trigger are cut at the end of their answer (a blank line
    or a new ``Q:``) and the trigger is appended.
    """
    at = generated.find(trigger)
    if at >= 0:
        return generated[: at + len(trigger)]
    for stop in ("\n\n", "\nQ:", "\nPassage:"):
        if stop in generated:
            generated = generated[: generated.index(stop)]
    return generated.rstrip() + " " + trigger


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
            "agreement": {"correct": self.agreement_correct, "incorrect": self.agreement_incorrect},
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
                   texts=[list(t) for t in payload.get("texts", [])], auroc_ci=None if ci is None else tuple(ci))

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
    sites = ["resid_pre.0"] + [f"resid_post.{l}" for l in range(model.n_layers)]
    acts = collect(model, list(texts), sites, select="last", batch_size=batch_size, progress=False)
    hidden = acts.stack(sites)
    embedding = LayerDecoder(model).decode(hidden[:1], token_ids=label_ids).token_logprobs
    layers = LayerDecoder(model, lens=lens).decode(hidden[1:], token_ids=label_ids,
                                                   layers=list(range(model.n_layers))).token_logprobs
    return torch.softmax(torch.cat([embedding, layers]), dim=-1).permute(1, 0, 2)  # [n, L+1, K]


def _generate(model: ModelAdapter, prompt: str, paths: int, max_new_tokens: int, temperature: float, top_p: float,
              seed: int) -> tuple[str, list[str]]:
    tok = model.tokenizer
    batch = tok(prompt, return_tensors="pt").to(model.device)
    n = batch["input_ids"].shape[1]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    with torch.no_grad():
        greedy = model.model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
        torch.manual_seed(seed)
        sampled = model.model.generate(**batch, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                       num_return_sequences=paths, max_new_tokens=max_new_tokens, pad_token_id=pad)
    decode = lambda ids: tok.decode(ids[n:], skip_special_tokens=True)  # noqa: E731
    return decode(greedy[0]), [decode(s) for s in sampled]


def _read_journal(journal: str | None, settings: dict[str, Any]) -> dict[str, list[str]]:
    """Sampled paths already in the journal for these settings (other settings are ignored)."""
    from pathlib import Path

    if journal is None or not Path(journal).is_file():
        return {}
    done = {}
    for line in Path(journal).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by an interruption
            continue
        if record.get("settings") == settings:
            done[record["key"]] = record["paths"]
    return done


def _append_journal(journal: str | None, settings: dict[str, Any], key: str, paths: list[str]) -> None:
    import os

    if journal is None:
        return
    from pathlib import Path

    Path(journal).parent.mkdir(parents=True, exist_ok=True)  # an --out in a new folder, as the result's writer
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"settings": settings, "key": key, "paths": paths}, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def internal_consistency(model: ModelAdapter, examples: Sequence[Example], labels: Sequence[str], *, paths: int = 5,
                         dataset: str = "custom", max_new_tokens: int = 96, temperature: float = 0.7,
                         top_p: float = 0.95, seed: int = 0, trigger: str = TRIGGER, lens: Lens = LOGIT_LENS,
                         journal: str | None = None, progress: bool = True) -> ConsistencyResult:
    """Run the whole protocol of the module docstring on ``examples``.

    With ``journal`` (a ``.jsonl`` path), each question's sampled paths are appended
    there as soon as they exist, and a rerun with the same settings reuses them, so an
    interrupted run loses at most the question in progress.
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
    done = _read_journal(journal, settings)
    texts, generated = [], []
    for i, example in enumerate(tqdm(examples, desc="sampling", disable=not progress)):
        key = f"{i}:{example.prompt}"
        if key in done:
            greedy, *sampled = done[key]
        else:
            greedy, sampled = _generate(model, example.prompt, paths, max_new_tokens, temperature, top_p, seed + i)
            _append_journal(journal, settings, key, [greedy, *sampled])
        generated.append([greedy, *sampled])
        texts.extend(example.prompt + reasoning_up_to_answer(g, trigger) for g in [greedy, *sampled])
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
    from sklearn.metrics import roc_auc_score

    flat_correct, flat_ic = sampled_correct.reshape(-1), sampled_ic.reshape(-1)
    auroc = float(roc_auc_score(flat_correct, flat_ic)) if 0 < flat_correct.sum() < flat_correct.size else float("nan")

    def paired_auroc(y: np.ndarray, s: np.ndarray) -> float:
        return float(roc_auc_score(y, s)) if 0 < y.sum() < y.size else float("nan")

    auroc_ci = None if math.isnan(auroc) else bootstrap_interval(paired_auroc, (flat_correct, flat_ic),
                                                                 bounds=PROBABILITY, n_resamples=1000)
    per_layer = scores.gather(2, y_hat.view(-1)[:, None, None].expand(-1, scores.shape[1], 1))[..., 0]  # [n*per, L+1]
    sampled_rows = torch.ones(n, per, dtype=torch.bool)
    sampled_rows[:, 0] = False
    mask_correct = torch.from_numpy(correct.reshape(-1)) & sampled_rows.view(-1)
    mask_wrong = ~torch.from_numpy(correct.reshape(-1)) & sampled_rows.view(-1)
    agree = lambda m: per_layer[m].mean(0).tolist() if m.any() else []  # noqa: E731
    return ConsistencyResult(
        model=model.name, dataset=dataset, labels=tuple(labels), n=n, paths=paths, layers=hidden_index_layers(int(scores.shape[1])),
        greedy_accuracy=float(correct[:, 0].mean()), sc_accuracy=sc, ic_accuracy=weighted, auroc=auroc,
        ic=sampled_ic, correct=sampled_correct, agreement_correct=agree(mask_correct),
        agreement_incorrect=agree(mask_wrong), texts=generated, auroc_ci=auroc_ci,
    )
