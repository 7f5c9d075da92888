"""Latent-language analysis (Wendler et al. 2024, "Do Llamas Work in English?";
Zhong et al. 2024, "Beyond English-Centric LLMs").

For each word of the packaged list, a few-shot prompt asks for the word in a target
language; at every layer the last position is decoded, and the probability mass of
the target word, of its English (latent) translation and of the source word is
summed over each word's token-prefix set (:mod:`interlayer.lens.prefixes`).

Tasks:
* ``translation``: ``{L1}: "{word}" - {L2}: "`` after ``shots`` demonstrations;
* ``repetition``: the same with L1 = L2;
* ``cloze``: a definition in the target language with the word masked as ``"___"``,
  then ``{Answer}: "`` (the source language is the target).

Words are dropped when the target's prefix set overlaps the latent's or the
source's (then the masses cannot be told apart), or when the English word is
contained in the target word; words with an empty prefix set in any compared
language are skipped. Both counts are reported.

Caveat: a tuned lens trained on English-heavy text (as the packaged sample is) can
bias these analyses towards English; the logit lens is the default for that reason.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.store.collect import collect
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site
from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError, choices
from interlayer.intervals import LEVEL, PROBABILITY, mean_interval
from interlayer.prompts import chat_turn
from interlayer.results import Result, decode_array, decode_frame, encode_array, encode_frame, require
from interlayer.plot_text import plot_text

from .prefixes import PrefixIndex

TASKS: tuple[str, ...] = ("translation", "repetition", "cloze")
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English", "fr": "Français", "de": "Deutsch", "es": "Español", "it": "Italiano", "pt": "Português",
    "nl": "Nederlands", "ru": "Русский", "zh": "中文", "ja": "日本語", "ko": "한국어",
}


def load_words() -> pd.DataFrame:
    """The packaged word list: one row per concept, one column per language."""
    data = json.loads(resources.files("interlayer.lens").joinpath("data/words.json").read_text(encoding="utf-8"))
    return pd.DataFrame(data["words"], columns=data["languages"])


def load_cloze() -> dict[str, Any]:
    """The packaged cloze sentences (``items`` keyed by English word), if present."""
    path = resources.files("interlayer.lens").joinpath("data/cloze.json")
    if not path.is_file():
        return {"languages": [], "answer_label": {}, "items": []}
    return json.loads(path.read_text(encoding="utf-8"))


def available_languages(task: str) -> list[str]:
    if task == "cloze":
        return list(load_cloze()["languages"])
    return list(load_words().columns)


def check_task(task: str, src: str, tgt: str, latents: list[str]) -> tuple[str, str]:
    """Validate the task and languages; returns (src, tgt) with src = tgt where the task implies it."""
    if task not in TASKS:
        raise InterlayerError(f"unknown task {task!r}; valid tasks: {choices(TASKS)}")
    valid = available_languages(task)
    if task in ("repetition", "cloze"):
        src = tgt
    for role, lang in (("source", src), ("target", tgt), *(("latent", l) for l in latents)):
        pool = valid if role != "latent" else list(load_words().columns)
        if lang not in pool:
            raise InterlayerError(f"no {task} data for {role} language {lang!r}; valid languages: {choices(pool)}")
    return src, tgt


@dataclass
class LatentResult(Result):
    """Per-word, per-layer probabilities; summaries are means over words with 95% bootstrap intervals."""

    model: str
    lens: str
    task: str
    src: str
    tgt: str
    layers: list[int]
    words: pd.DataFrame
    """The words used (columns: the languages involved) and their prompts."""
    p_target: np.ndarray
    """``[n_words, n_layers]``"""
    p_latent: dict[str, np.ndarray]
    p_source: np.ndarray
    entropy: np.ndarray
    """``[n_words, n_layers]`` entropy of the whole distribution, nats."""
    n_missing: int = 0
    """Words skipped because a word had no token prefixes in the vocabulary."""
    n_overlap: int = 0
    """Words dropped because prefix sets overlapped across the compared languages."""
    skipped: list[str] = field(default_factory=list)

    @property
    def n_words(self) -> int:
        """The number of words analysed (rows of ``p_target``)."""
        return int(self.p_target.shape[0])

    @staticmethod
    def _mean_ci(values: np.ndarray, bounds: tuple[float, float] | None = PROBABILITY
                 ) -> tuple[list[float], list[float], list[float]]:
        """Mean over words and its 95% percentile-bootstrap interval (seeded), per layer;
        probabilities' intervals stay in [0, 1] (:func:`interlayer.intervals.mean_interval`)."""
        low, high = mean_interval(values, bounds=bounds)
        return values.mean(0).tolist(), low.tolist(), high.tolist()

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer lens latent --out``: one mean per decoder layer with its
        95% bootstrap interval, and (under ``per_word``) the per-word values they come from,
        so that :meth:`load` rebuilds the result."""
        series = {"p_target": self.p_target, "p_source": self.p_source}
        means = {k: self._mean_ci(v) for k, v in series.items()}
        means["entropy"] = self._mean_ci(self.entropy, (0.0, math.inf))
        latent = {lang: self._mean_ci(v) for lang, v in self.p_latent.items()}
        ci = {k: {"low": v[1], "high": v[2]} for k, v in means.items()}
        ci["p_latent"] = {lang: {"low": v[1], "high": v[2]} for lang, v in latent.items()}
        ci["level"] = LEVEL
        ci["method"] = "percentile bootstrap over words"
        return {
            "model": self.model, "lens": self.lens, "task": self.task, "src": self.src, "tgt": self.tgt,
            "n_words": self.n_words, "layers": self.layers, "p_target": means["p_target"][0],
            "p_latent": {lang: v[0] for lang, v in latent.items()}, "p_source": means["p_source"][0],
            "entropy": means["entropy"][0], "ci": ci, "n_missing": self.n_missing, "n_overlap": self.n_overlap,
            "skipped": list(self.skipped),
            "per_word": {"words": encode_frame(self.words), "p_target": encode_array(self.p_target),
                         "p_source": encode_array(self.p_source), "entropy": encode_array(self.entropy),
                         "latents": list(self.p_latent),
                         "p_latent": {lang: encode_array(v) for lang, v in self.p_latent.items()}},
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "LatentResult":
        """The result :meth:`to_json` described (its ``per_word`` part)."""
        require(payload, "model", "task", "src", "tgt", "layers", "per_word", what="LatentResult")
        words = payload["per_word"]
        return cls(model=payload["model"], lens=payload.get("lens", "logit"), task=payload["task"], src=payload["src"],
                   tgt=payload["tgt"], layers=[int(x) for x in payload["layers"]], words=decode_frame(words["words"]),
                   p_target=decode_array(words["p_target"]), p_source=decode_array(words["p_source"]),
                   entropy=decode_array(words["entropy"]),
                   p_latent={lang: decode_array(words["p_latent"][lang]) for lang in words.get("latents", words["p_latent"])},
                   n_missing=int(payload.get("n_missing", 0)), n_overlap=int(payload.get("n_overlap", 0)),
                   skipped=list(payload.get("skipped", [])))

    def headline(self) -> dict[str, Any]:
        """The task, the word count, and the peak of each series with its layer."""
        payload = self.to_json()
        out: dict[str, Any] = {"model": self.model, "lens": self.lens, "task": f"{self.task} {self.src}->{self.tgt}",
                               "words": self.n_words}
        peaks = [(f"target ({self.tgt})", payload["p_target"])]
        peaks += [(f"latent ({lang})", v) for lang, v in payload["p_latent"].items()]
        for name, values in peaks:
            i = int(np.argmax(values))
            out[f"peak p {name}"] = f"{values[i]:.3f} at layer {self.layers[i]}"
        return out

    def to_frame(self) -> pd.DataFrame:
        """Per layer: mean and CI of each series."""
        payload = self.to_json()
        frame = pd.DataFrame({"layer": self.layers, "p_target": payload["p_target"], "p_source": payload["p_source"],
                              "entropy": payload["entropy"]})
        for lang, values in payload["p_latent"].items():
            frame[f"p_latent_{lang}"] = values
        for key in ("p_target", "p_source", "entropy"):
            frame[f"{key}_low"], frame[f"{key}_high"] = payload["ci"][key]["low"], payload["ci"][key]["high"]
        for lang, band in payload["ci"]["p_latent"].items():
            frame[f"p_latent_{lang}_low"], frame[f"p_latent_{lang}_high"] = band["low"], band["high"]
        return frame

    def plot(self) -> go.Figure:
        """Language probabilities by layer with 95% CI bands; entropy on the right axis."""
        payload = self.to_json()
        fig = go.Figure()
        series = [(f"target ({self.tgt})", payload["p_target"], payload["ci"]["p_target"])]
        series += [(f"latent ({lang})", payload["p_latent"][lang], payload["ci"]["p_latent"][lang]) for lang in payload["p_latent"]]
        if self.src != self.tgt:
            series.append((f"source ({self.src})", payload["p_source"], payload["ci"]["p_source"]))
        for name, mean, band in series:
            fig.add_trace(go.Scatter(x=self.layers + self.layers[::-1], y=band["high"] + band["low"][::-1], fill="toself",
                                     opacity=0.2, line={"width": 0}, showlegend=False, hoverinfo="skip", name=name))
            fig.add_trace(go.Scatter(x=self.layers, y=mean, name=plot_text(name), mode="lines+markers"))
        fig.add_trace(go.Scatter(x=self.layers, y=payload["entropy"], name="entropy (nats)", yaxis="y2",
                                 line={"dash": "dot", "color": "grey"}))
        fig.update_layout(
            title=plot_text(f"{self.task} {self.src}->{self.tgt}, {self.model}, {self.lens} lens, {self.n_words} words"),
            xaxis_title="layer", yaxis={"title": "probability", "range": [0, 1]},
            yaxis2={"title": "entropy (nats)", "overlaying": "y", "side": "right"},
        )
        return fig


def _quote(text: str) -> str:
    return f'"{text}"'


def build_prompt(task: str, src: str, tgt: str, word: pd.Series, demos: list[pd.Series],
                 cloze: dict[str, Any] | None = None) -> str:
    """The few-shot prompt for one word; ends where the target word should start."""
    if task == "cloze":
        label = cloze["answer_label"][tgt]
        lines = [f"{d['sentence']} {label}: {_quote(d[tgt])}." for d in demos]
        return "\n".join(lines + [f"{word['sentence']} {label}: \""])
    a, b = LANGUAGE_NAMES[src], LANGUAGE_NAMES[tgt]
    lines = [f"{a}: {_quote(d[src])} - {b}: {_quote(d[tgt])}" for d in demos]
    return "\n".join(lines + [f"{a}: {_quote(word[src])} - {b}: \""])


def select_words(table: pd.DataFrame, index: PrefixIndex, src: str, tgt: str,
                 latents: list[str]) -> tuple[list[pd.Series], list[dict[str, set[int]]], int, int, list[str]]:
    """The words whose prefix sets can be told apart: ``(rows, id_sets, n_missing, n_overlap, skipped)``.

    A word is skipped when any compared language has no token prefixes, and dropped
    when the target's prefix set overlaps a latent's or the source's, or the English
    word is contained in the target word."""
    keep, id_sets, skipped = [], [], []
    n_missing = n_overlap = 0
    for _, row in table.iterrows():
        sets = {"target": index.ids(row[tgt]), "source": index.ids(row[src])}
        sets.update({f"latent:{lang}": index.ids(row[lang]) for lang in latents})
        if any(not s for s in sets.values()):
            n_missing += 1
            skipped.append(f"{row['en']} (no tokens)")
            continue
        clash = any(lang != tgt and sets["target"] & sets[f"latent:{lang}"] for lang in latents)
        clash |= src != tgt and bool(sets["target"] & sets["source"])
        clash |= tgt != "en" and row["en"].lower() in row[tgt].lower()
        if clash:
            n_overlap += 1
            skipped.append(f"{row['en']} (overlap)")
            continue
        keep.append(row)
        id_sets.append(sets)
    return keep, id_sets, n_missing, n_overlap, skipped


def _word_table(task: str, tgt: str, words: pd.DataFrame | None, limit: int | None) -> tuple[pd.DataFrame, Any]:
    table = (words if words is not None else load_words()).copy()
    cloze = None
    if task == "cloze":
        cloze = load_cloze()
        sentences = {item["en_word"]: item["sentences"][tgt] for item in cloze["items"] if tgt in item["sentences"]}
        table = table[table["en"].isin(sentences)].copy()
        table["sentence"] = table["en"].map(sentences)
    if limit is not None:
        table = table.head(limit)
    return table, cloze


def latent_language(model: ModelAdapter, *, src: str = "fr", tgt: str = "zh", task: str = "translation",
                    latents: list[str] | None = None, shots: int = 4, seed: int = 0, limit: int | None = None,
                    lens: Lens = LOGIT_LENS, batch_size: int = 8, words: pd.DataFrame | None = None,
                    chat: bool = False, progress: bool = True) -> LatentResult:
    """Run the latent-language analysis; see the module docstring.

    Args:
        src: the source language code (see :data:`LANGUAGE_NAMES`).
        tgt: the target language code.
        task: ``translation``, ``repetition`` or ``cloze``.
        latents: latent languages to track (default ``["en"]``).
        shots: demonstrations per prompt, drawn (seeded) from the other usable words.
        lens: the logit lens (default) or any :class:`~interlayer.decoding.Lens`, e.g. a tuned lens.
        words: a custom word table (columns are language codes), instead of the packaged list.
    """
    latents = list(latents or ["en"])
    src, tgt = check_task(task, src, tgt, latents)
    if shots < 0:
        raise InterlayerError(f"shots must be at least 0, got {shots}")
    if limit is not None and limit < 1:
        raise InterlayerError(f"limit must be at least 1, got {limit}")
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer; the latent-language analysis needs one")
    table, cloze = _word_table(task, tgt, words, limit)
    keep, id_sets, n_missing, n_overlap, skipped = select_words(table, PrefixIndex(model.tokenizer), src, tgt, latents)
    if len(keep) < shots + 1:
        raise InterlayerError(f"only {len(keep)} usable words for {task} {src}->{tgt} "
                              f"({n_missing} without tokens, {n_overlap} overlapping); need at least {shots + 1}")
    rng = random.Random(seed)
    prompts = []
    for i, row in enumerate(keep):
        others = [k for j, k in enumerate(keep) if j != i]
        prompts.append(build_prompt(task, src, tgt, row, rng.sample(others, shots), cloze))
    if chat:  # each few-shot prompt as one user turn; the answer starts the assistant's turn
        prompts = [chat_turn(model, p) for p in prompts]

    sites = [Site(layer, "resid_post").name for layer in range(model.n_layers)]
    acts = collect(model, prompts, sites, select="last", batch_size=batch_size, progress=progress)
    union = sorted(set().union(*(s for sets in id_sets for s in sets.values())))
    column = {token: c for c, token in enumerate(union)}
    layers = list(range(model.n_layers))
    decoded = LayerDecoder(model, lens=lens).decode(acts.stack(sites), entropy=True, token_ids=union, layers=layers)
    logp = decoded.token_logprobs  # [layers, words, union]

    def mass(key: str) -> np.ndarray:
        out = np.zeros((len(keep), len(layers)))
        for w, sets in enumerate(id_sets):
            cols = [column[t] for t in sets[key]]
            out[w] = torch.logsumexp(logp[:, w, cols], -1).exp().numpy()
        return out

    used = pd.DataFrame(keep)[sorted({"en", src, tgt, *latents})].reset_index(drop=True)
    used["prompt"] = prompts
    return LatentResult(
        model=model.name, lens=lens.name, task=task, src=src, tgt=tgt, layers=layers, words=used,
        p_target=mass("target"), p_latent={lang: mass(f"latent:{lang}") for lang in latents},
        p_source=mass("source"), entropy=decoded.entropy.T.numpy(), n_missing=n_missing, n_overlap=n_overlap,
        skipped=skipped,
    )
