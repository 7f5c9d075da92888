"""MEXA (Kargaran et al. 2024, "MEXA: Multilingual Evaluation of English-Centric LLMs
via Cross-Lingual Alignment"), with the semantics of its reference code (cisnlp/Mexa).

For each of the L+1 hidden states (the embedding output, every block's output, the
last one after the final norm, as Hugging Face's ``output_hidden_states`` reports
them) each sentence gets one embedding: the position-weighted mean with
``w_t = t`` over its tokens, BOS included, or its last token. For a language ``L`` and
the pivot (English), ``S[i, j] = cos(pivot_i, L_j)``; sentence ``i`` is aligned when
``S[i, i]`` is strictly greater than every other entry of its row and of its column
(ties are misses). The score of a layer is hits / N.

Embeddings come from the activation store, batched; padding does not change them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.model.adapter import ModelAdapter
from interlayer.errors import InterlayerError, choices
from interlayer.store.collect import collect
from interlayer.intervals import proportion_interval
from interlayer.layers import hidden_index, hidden_index_layers, hidden_index_site
from interlayer.options import str_list
from interlayer.results import Result, require
from interlayer.plot_text import plot_text

POOLINGS = {"weighted": "weighted_mean", "last": "last"}
SUFFIXES = (".devtest", ".txt")


def packaged_data_dir() -> Path:
    """The shipped FLORES-200 devtest subset (first 100 lines, 34 languages; CC BY-SA 4.0)."""
    return Path(str(resources.files("interlayer.probes").joinpath("data/flores200")))


def available_languages(data_dir: str | Path | None = None) -> list[str]:
    """Language codes with a ``<lang>.devtest`` or ``<lang>.txt`` file in ``data_dir``
    (names starting with a capital, such as ``LICENSE.txt`` or ``SOURCE.txt``, are not languages)."""
    directory = Path(data_dir) if data_dir is not None else packaged_data_dir()
    if not directory.is_dir():
        raise InterlayerError(f"parallel-data directory {str(directory)!r} does not exist")
    return sorted({p.stem for p in directory.iterdir() if p.suffix in SUFFIXES and not p.stem[:1].isupper()})


def load_parallel(langs: Sequence[str], n: int, data_dir: str | Path | None = None) -> dict[str, list[str]]:
    """The first ``n`` lines of each language's file, checked to be parallel."""
    if n < 2:
        raise InterlayerError(f"MEXA needs at least 2 parallel sentences, got n={n}")
    directory = Path(data_dir) if data_dir is not None else packaged_data_dir()
    available = available_languages(directory)
    missing = [lang for lang in langs if lang not in available]
    if missing:
        raise InterlayerError(f"no parallel file for {choices(missing)} in {directory}; available languages: "
                              f"{choices(available)}")
    lines: dict[str, list[str]] = {}
    for lang in langs:
        path = next(directory / f"{lang}{s}" for s in SUFFIXES if (directory / f"{lang}{s}").is_file())
        try:
            lines[lang] = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise InterlayerError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                                  f"{err.start}); parallel files must be UTF-8, one sentence per line") from err
    lengths = {lang: len(v) for lang, v in lines.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{lang}: {count}" for lang, count in lengths.items())
        raise InterlayerError(f"parallel files of different lengths in {directory} ({detail}); line i must be the "
                              "same sentence in every file")
    if min(lengths.values()) < n:
        raise InterlayerError(f"the parallel files hold {min(lengths.values())} lines, fewer than n={n}")
    for lang, values in lines.items():
        empty = [i for i, v in enumerate(values[:n]) if not v.strip()]
        if empty:
            raise InterlayerError(f"{lang} has empty lines at {empty[:5]} among the first {n}")
    return {lang: values[:n] for lang, values in lines.items()}


def hidden_state_sites(model: ModelAdapter) -> list[str]:
    """The L+1 sites matching Hugging Face's ``hidden_states``: the embedding output,
    every block output but the last, then the last after the final norm (hidden index
    ``i`` is ``resid_post.(i-1)``; :mod:`interlayer.layers`)."""
    return [hidden_index_site(i) for i in range(model.n_layers)] + ["ln_final"]


def sentence_embeddings(model: ModelAdapter, sentences: Sequence[str], pooling: str = "weighted",
                        batch_size: int = 16, progress: bool = False, padding_side: str = "right") -> torch.Tensor:
    """``[L+1, n, d]`` sentence embeddings of every hidden state, from the store
    (padding on either side gives the same embeddings)."""
    if pooling not in POOLINGS:
        raise InterlayerError(f"unknown pooling {pooling!r}; valid choices: {choices(POOLINGS)}")
    sites = hidden_state_sites(model)
    acts = collect(model, list(sentences), sites, select=POOLINGS[pooling], batch_size=batch_size, progress=progress,
                   padding_side=padding_side)
    out = torch.empty((len(sites), *acts[sites[0]].shape), dtype=torch.float64)
    for i, site in enumerate(sites):  # filled site by site, each freed once copied: no stacked copy beside it
        out[i] = acts.tensors.pop(site)
    return out


def cosine_matrix(pivot: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``S[i, j] = cos(pivot_i, other_j)`` in float64."""
    a = pivot.double() / pivot.double().norm(dim=-1, keepdim=True)
    b = other.double() / other.double().norm(dim=-1, keepdim=True)
    return a @ b.T


def mutual_nearest_hits(similarity: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: ``S[i, i]`` strictly greater than every other entry of row i and
    of column i. Ties are misses."""
    n = similarity.shape[0]
    if similarity.shape != (n, n) or n < 2:
        raise InterlayerError(f"similarity must be a square matrix of at least 2x2, got {tuple(similarity.shape)}")
    diag = similarity.diagonal()
    off = similarity.masked_fill(torch.eye(n, dtype=torch.bool, device=similarity.device), float("-inf"))
    return (diag > off.max(dim=1).values) & (diag > off.max(dim=0).values)


def alignment_scores(pivot: torch.Tensor, other: torch.Tensor) -> list[float]:
    """Per-layer MEXA scores of ``[L+1, N, d]`` embeddings against the pivot's."""
    return [float(mutual_nearest_hits(cosine_matrix(p, o)).double().mean()) for p, o in zip(pivot, other)]


@dataclass
class MexaResult(Result):
    """Per-language alignment scores (hits / N) at every hidden state.

    MEXA reads the hidden states 0..L (``output_hidden_states``): ``layers`` holds the
    block index of each (:mod:`interlayer.layers`; ``None`` for the embeddings) and
    :attr:`hidden_index` their hidden index. A count of hidden states is accepted for
    ``layers`` and made into that list.
    """

    model: str
    pooling: str
    n: int
    pivot: str
    layers: list[int | None]
    scores: dict[str, list[float]]

    def __post_init__(self) -> None:
        if isinstance(self.layers, int):
            self.layers = hidden_index_layers(self.layers)

    @property
    def hidden_index(self) -> list[int]:
        """The hidden index (0 = embeddings) of each entry of :attr:`layers`."""
        return [hidden_index(layer) for layer in self.layers]

    def interval(self, lang: str) -> tuple[list[float], list[float]]:
        """95% Wilson intervals of one language's scores (each a proportion of ``n`` sentences)."""
        bounds = [proportion_interval(round(score * self.n), self.n) for score in self.scores[lang]]
        return [b[0] for b in bounds], [b[1] for b in bounds]

    @property
    def mean(self) -> dict[str, float]:
        """Each language's score averaged over the hidden states, ``{lang: mean}``."""
        return {lang: sum(v) / len(v) for lang, v in self.scores.items()}

    @property
    def max(self) -> dict[str, float]:
        """Each language's best score over the hidden states, ``{lang: max}``."""
        return {lang: max(v) for lang, v in self.scores.items()}

    def to_json(self) -> dict[str, Any]:
        """The schema of ``interlayer probes mexa --out``: ``layers`` (block index, null for the
        embeddings) and ``hidden_index`` name each score's position."""
        return {"model": self.model, "pooling": self.pooling, "n": self.n, "pivot": self.pivot, "layers": self.layers,
                "hidden_index": self.hidden_index, "languages": list(self.scores), "scores": self.scores,
                "mean": self.mean, "max": self.max,
                "ci": {lang: dict(zip(("low", "high"), self.interval(lang))) for lang in self.scores}}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "MexaResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "pooling", "n", "pivot", "layers", "scores", what="MexaResult")
        return cls(payload["model"], payload["pooling"], int(payload["n"]), payload["pivot"], payload["layers"],
                   {lang: [float(v) for v in payload["scores"][lang]]
                    for lang in payload.get("languages", payload["scores"])})

    def headline(self) -> dict[str, Any]:
        """Languages, sentences and the best and least aligned language."""
        frame = self.summary()
        return {"model": self.model, "pivot": self.pivot, "pooling": self.pooling, "sentences": self.n,
                "languages": len(self.scores), "hidden states": len(self.layers),
                "best aligned (mean)": f"{frame.language[0]} ({frame['mean'][0]:.3f})",
                "least aligned (mean)": f"{frame.language.iloc[-1]} ({frame['mean'].iloc[-1]:.3f})"}

    def to_frame(self) -> pd.DataFrame:
        """Long format: language, layer (block index; empty for the embeddings), hidden_index, score, its interval."""
        rows = []
        for lang, values in self.scores.items():
            low, high = self.interval(lang)
            for i, score in enumerate(values):
                rows.append({"language": lang, "layer": self.layers[i], "hidden_index": self.hidden_index[i],
                             "score": score, "score_low": low[i], "score_high": high[i]})
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """Mean and max over layers per language, best first."""
        return pd.DataFrame({"language": list(self.scores), "mean": list(self.mean.values()),
                             "max": list(self.max.values())}).sort_values("mean", ascending=False, ignore_index=True)

    def plot(self) -> go.Figure:
        """Languages x hidden states heatmap (hidden state 0 is the embedding output); the hover
        text gives each score's 95% Wilson interval."""
        langs = list(self.summary().language)
        hover = []
        for lang in langs:
            low, high = self.interval(lang)
            hover.append([f"{plot_text(lang)}, hidden state {i}: {v:.3f} [{a:.3f}, {b:.3f}]"
                          for i, (v, a, b) in enumerate(zip(self.scores[lang], low, high))])
        fig = go.Figure(go.Heatmap(z=[self.scores[l] for l in langs], x=self.hidden_index,
                                   y=[plot_text(l) for l in langs], zmin=0, zmax=1, colorscale="Viridis",
                                   hovertext=hover, hoverinfo="text", colorbar={"title": "MEXA"}))
        fig.update_layout(title=plot_text(f"MEXA alignment with {self.pivot}: {self.model} ({self.pooling}, n={self.n})"),
                          xaxis_title="hidden state (0 = embeddings)", yaxis_title="language",
                          height=max(400, 22 * len(langs)))
        fig.update_yaxes(tickmode="array", tickvals=list(range(len(langs))), ticktext=[plot_text(l) for l in langs],
                         automargin=True)  # every language labelled, not every other one
        return fig

    def plot_summary(self) -> go.Figure:
        """Bars of the mean and max over layers per language."""
        frame = self.summary()
        fig = go.Figure([go.Bar(x=[plot_text(l) for l in frame.language], y=frame["mean"], name="mean over layers"),
                         go.Bar(x=[plot_text(l) for l in frame.language], y=frame["max"], name="max over layers")])
        fig.update_layout(barmode="group", title=plot_text(f"MEXA summary: {self.model}"), yaxis={"range": [0, 1]})
        return fig


PASS_SENTENCES = 1024
"""At most this many sentences (whole languages, at least one) go through one store pass:
the languages of a pass are sorted by length together, so batches pad less than one
language's would, and the pooled rows held at once stay bounded."""


def language_passes(langs: Sequence[str], n: int, budget: int = PASS_SENTENCES) -> list[list[str]]:
    """``langs`` in order, grouped into passes of at most ``budget`` sentences (``n`` per
    language; a language larger than the budget gets a pass of its own)."""
    per_pass = max(1, budget // n)
    return [list(langs[i:i + per_pass]) for i in range(0, len(langs), per_pass)]


def language_embeddings(model: ModelAdapter, data: dict[str, list[str]], langs: Sequence[str], pooling: str,
                        batch_size: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """``{lang: [L+1, n, d]}``: every language of ``langs`` embedded in one store pass.

    The sentences of all of them are batched together (the store sorts them by length),
    which pads less than a pass per language; an embedding does not depend on the batch
    it was computed in (padding does not change it; to float rounding)."""
    sentences = [s for lang in langs for s in data[lang]]
    embeddings = sentence_embeddings(model, sentences, pooling, batch_size, progress)
    out, start = {}, 0
    for lang in langs:
        out[lang] = embeddings[:, start:start + len(data[lang])]
        start += len(data[lang])
    return out


def mexa(model: ModelAdapter, langs: str | Sequence[str] = "all", *, n: int = 100, pooling: str = "weighted",
         data_dir: str | Path | None = None, pivot: str = "eng_Latn", batch_size: int = 16,
         progress: bool = True) -> MexaResult:
    """MEXA scores of ``langs`` against ``pivot`` at every hidden state.

    ``langs="all"`` takes every language in ``data_dir`` (default: the packaged
    FLORES-200 subset) but the pivot. Each language, the pivot included, is embedded
    once; the languages share store passes of at most :data:`PASS_SENTENCES` sentences
    (:func:`language_passes`).
    """
    if pooling not in POOLINGS:
        raise InterlayerError(f"unknown pooling {pooling!r}; valid choices: {choices(POOLINGS)}")
    if isinstance(langs, str):
        langs = available_languages(data_dir) if langs == "all" else str_list(langs, empty=True)
    langs = [l for l in langs if l != pivot] or list(langs)
    if not langs:
        raise InterlayerError("no languages given")
    data = load_parallel([pivot, *langs], n, data_dir)
    from interlayer.progress import tqdm

    pivot_emb = None
    scores = {}
    with tqdm(total=len(langs), desc="mexa", disable=not progress) as bar:
        for group in language_passes(list(dict.fromkeys([pivot, *langs])), n, PASS_SENTENCES):
            embeddings = language_embeddings(model, data, group, pooling, batch_size)
            if pivot_emb is None:
                pivot_emb = embeddings[pivot].clone()  # not a view that keeps the whole pass alive
            for lang in (lang for lang in group if lang in langs):
                scores[lang] = alignment_scores(pivot_emb, embeddings[lang])
                bar.update(1)
    return MexaResult(model.name, pooling, n, pivot, hidden_index_layers(int(pivot_emb.shape[0])), scores)
