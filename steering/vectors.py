"""Steering vectors from contrastive pairs, read from the activation store.

Each pair's question is completed once with the matching and once with the
non-matching answer; the activations of both texts are read at one position (or
averaged over the answer) at every requested layer, in one store pass for all layers.
Per layer ``l``, with ``d_i = a_i(matching) - a_i(not matching)``:

* ``mean_diff`` (CAA, Rimsky et al. 2024): ``v_l = mean_i d_i``;
* ``pca`` (as repeng): the first principal component of the ``d_i`` (centred), its sign
  chosen so that ``v_l · mean_i d_i > 0``; raw length: the mean projection of ``d_i`` on it;
* ``logistic``: the weight vector of a logistic regression (scikit-learn, L2, C = 1)
  separating matching from non-matching activations; raw length: its norm.

``normalize=True`` (the default, as the seed paper: ``v_l = normalize(mean(d))``) makes
every layer's vector unit-norm, so a coefficient is a length in activation units.

``chat`` (:data:`interlayer.prompts.ChatMode`) says whether each question is asked
through the model's chat template. The vector and its file: :mod:`.vector_file`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from interlayer.errors import InterlayerError, choices
from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import SITE_KINDS, Site
from interlayer.prompts import ChatMode, chat_turn, use_chat
from interlayer.store.collect import collect

from .datasets import ContrastPair, check_balance, load_pairs
from .vector_file import FORMAT, UNIT_TOLERANCE, SteeringFileError, SteeringVector, directions_sha256, from_metadata

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("mean_diff", "pca", "logistic")
READS: tuple[str, ...] = ("last", "answer", "mean")


# ---------------------------------------------------------------- reading
def prompt_text(model: ModelAdapter, question: str, chat: ChatMode | bool = "no") -> str:
    """The text a question is asked as: the question itself, or (``chat`` resolving to yes,
    :func:`interlayer.prompts.use_chat`) the model's chat template around it as a user
    turn, ending where the assistant's answer begins."""
    return _asked(model, question, use_chat(model, chat))


def _asked(model: ModelAdapter, question: str, templated: bool) -> str:
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer; steering data is text")
    return chat_turn(model, question) if templated else question


def encode(model: ModelAdapter, text: str, templated: bool = False) -> list[int]:
    """Token ids of a prompt text (special tokens added unless the chat template wrote them:
    ``templated``)."""
    return list(model.tokenizer(text, add_special_tokens=not templated).input_ids)


def pair_texts(model: ModelAdapter, pairs: Sequence[ContrastPair],
               chat: ChatMode | bool = "no") -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Token ids of question + matching and question + non-matching answer, and where each
    answer starts (the length of the tokenised question)."""
    return _pair_ids(model, pairs, use_chat(model, chat))


def _pair_ids(model: ModelAdapter, pairs: Sequence[ContrastPair],
              templated: bool) -> tuple[list[list[int]], list[list[int]], list[int]]:
    pos, neg, starts = [], [], []
    for pair in pairs:
        prompt = _asked(model, pair.question, templated)
        question = encode(model, prompt, templated)
        pos.append(encode(model, prompt + _joined(pair.matching, templated), templated))
        neg.append(encode(model, prompt + _joined(pair.not_matching, templated), templated))
        starts.append(min(len(question), len(pos[-1]) - 1, len(neg[-1]) - 1))
    return pos, neg, starts


def _joined(answer: str, templated: bool = False) -> str:
    """An answer as it follows its question: after a space unless it brings its own (in a
    chat template the answer opens the assistant's turn, with no space)."""
    if templated:
        return answer.strip()
    return answer if answer[:1].isspace() else " " + answer


def _read_positions(model: ModelAdapter, ids: list[list[int]], starts: list[int], read: str) -> list[list[int]]:
    if read == "last":
        return [[len(i) - 1] for i in ids]
    if read == "mean":
        return [list(range(s, len(i))) for i, s in zip(ids, starts)]
    out = []  # "answer": the first answer token that holds a letter or digit (the A of "(A)", the Yes of " Yes")
    for row, start in zip(ids, starts):
        strings = model.token_strings(row[start:])
        found = next((start + k for k, s in enumerate(strings) if any(c.isalnum() for c in s)), len(row) - 1)
        out.append([found])
    return out


def read_activations(model: ModelAdapter, ids: list[list[int]], starts: list[int], sites: list[str], read: str,
                     batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """``[len(sites), n, d]``: each text's activation at its read position (averaged over the
    answer for ``read="mean"``), from one store pass over all sites."""
    positions = _read_positions(model, ids, starts, read)
    acts = collect(model, ids, sites, select="positions", positions=positions, batch_size=batch_size, progress=progress)
    stacked = acts.stack(sites)  # rows ordered by sequence, then position
    if read != "mean":
        return stacked
    seq = acts.meta["sequence"]
    counts = torch.bincount(seq, minlength=len(ids)).clamp_min(1).float()
    summed = torch.zeros(len(sites), len(ids), stacked.shape[-1]).index_add_(1, seq, stacked.float())
    return summed / counts[None, :, None]


# ---------------------------------------------------------------- methods
def direction(pos: torch.Tensor, neg: torch.Tensor, method: str, normalize: bool) -> torch.Tensor:
    """The steering direction of one layer from ``[n, d]`` matching and non-matching activations."""
    diffs = (pos - neg).double()
    mean = diffs.mean(0)
    if method == "mean_diff":
        v = mean
    elif method == "pca":
        centred = diffs - mean
        if diffs.shape[0] < 2 or float(centred.abs().max()) == 0.0:
            v = mean
        else:
            _, _, vh = torch.linalg.svd(centred, full_matrices=False)
            pc = vh[0]
            pc = pc if float(pc @ mean) >= 0 else -pc
            v = pc * float((diffs @ pc).mean())
    elif method == "logistic":
        from sklearn.linear_model import LogisticRegression

        x = torch.cat([pos, neg]).double().numpy()
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(x, y)
        v = torch.from_numpy(clf.coef_[0]).double()
    else:
        raise InterlayerError(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    norm = float(v.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise InterlayerError(f"the {method} direction is zero or not finite; the pairs do not separate at this layer")
    return (v / norm if normalize else v).float()


def train_vectors(model: ModelAdapter, dataset: str | Sequence[ContrastPair], layers: Sequence[int] | str = "all", *,
                  method: str = "mean_diff", site: str = "resid_post", read: str = "last", normalize: bool = True,
                  n: int | None = None, chat: ChatMode | bool = "no", batch_size: int = 8,
                  progress: bool = True) -> SteeringVector:
    """Steering vectors at ``layers`` of ``site`` from a dataset name (see
    :mod:`interlayer.steering.datasets`) or a list of :class:`ContrastPair`; one store pass
    reads every layer. See the module docstring for the methods. ``chat`` (auto, yes or no;
    :func:`interlayer.prompts.use_chat`): whether each question is asked through the model's
    chat template (instruct models); the vector records what was done
    (:attr:`SteeringVector.chat`)."""
    if method not in METHODS:
        raise InterlayerError(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    if read not in READS:
        raise InterlayerError(f"unknown read position {read!r}; valid choices: {choices(READS)}")
    if site not in SITE_KINDS:
        raise InterlayerError(f"unknown site kind {site!r}; valid kinds: {choices(SITE_KINDS)}")
    layer_list = list(range(model.n_layers)) if layers == "all" else [model.check_layer(int(l)) for l in layers]
    sites = [Site(layer, site).name for layer in layer_list]
    for name in sites:
        model.site(name)
    name = dataset if isinstance(dataset, str) else "custom"
    pairs = load_pairs(dataset, "generate", n) if isinstance(dataset, str) else list(dataset)[:n]
    if len(pairs) < 2:
        raise InterlayerError(f"need at least 2 contrast pairs, got {len(pairs)}")
    check_balance(pairs)
    templated = use_chat(model, chat)
    pos_ids, neg_ids, starts = _pair_ids(model, pairs, templated)
    acts = read_activations(model, pos_ids + neg_ids, starts + starts, sites, read, batch_size, progress)
    n_pairs = len(pairs)
    directions = {layer: direction(acts[i, :n_pairs], acts[i, n_pairs:], method, normalize)
                  for i, layer in enumerate(layer_list)}
    return SteeringVector(directions, site=site, method=method, read=read, normalized=normalize, model=model.name,
                          weights_sha256=model.weights_sha256(), dataset=name, n_pairs=n_pairs, chat=templated)


# ---------------------------------------------------------------- purify
PURIFY_MODES: tuple[str, ...] = ("qr", "combined")


def purify(vector: SteeringVector, against: Sequence[SteeringVector], mode: str = "qr") -> SteeringVector:
    """Remove what ``vector`` shares with other traits' vectors, per layer (Handa et al. 2025).

    * ``qr`` (their code): QR-orthogonalise against the others: with ``Q`` an orthonormal
      basis of the other vectors at layer ``l``, ``v' = v - Q Qᵀ v``.
    * ``combined`` (their text, this project's reading): ``v' = v̂ + normalize(v̂ - mean_j ĉ_j)``,
      the base direction plus the normalised difference from the others' mean direction.

    The result keeps the vector's layers (each must exist in every other vector) and is
    renormalised when the vector was normalised.
    """
    if mode not in PURIFY_MODES:
        raise InterlayerError(f"unknown purify mode {mode!r}; valid choices: {choices(PURIFY_MODES)}")
    if not against:
        raise InterlayerError("purify needs at least one vector to purify against")
    out = {}
    for layer, v in vector.directions.items():
        others = []
        for other in against:
            if other.d_model != vector.d_model:
                raise InterlayerError(f"cannot purify against a vector of d_model={other.d_model} (this one: {vector.d_model})")
            others.append(other[layer].double())
        v64 = v.double()
        if mode == "qr":
            q, _ = torch.linalg.qr(torch.stack(others, 1))  # [d, k]
            new = v64 - q @ (q.T @ v64)
        else:
            unit = v64 / v64.norm()
            mean_other = torch.stack([o / o.norm() for o in others]).mean(0)
            diff = unit - mean_other
            new = unit + diff / diff.norm().clamp_min(1e-12)
        if vector.normalized:
            new = new / new.norm().clamp_min(1e-12)
        out[layer] = new.float()
    names = [o.dataset or "vector" for o in against]
    return SteeringVector(out, site=vector.site, method=vector.method, read=vector.read, normalized=vector.normalized,
                          model=vector.model, weights_sha256=vector.weights_sha256, dataset=vector.dataset,
                          n_pairs=vector.n_pairs, extra={**vector.extra, "purified": {"mode": mode, "against": names}},
                          chat=vector.chat)


__all__ = ["FORMAT", "METHODS", "PURIFY_MODES", "READS", "UNIT_TOLERANCE", "SteeringFileError", "SteeringVector",
           "direction", "directions_sha256", "encode", "from_metadata", "pair_texts", "prompt_text", "purify",
           "read_activations", "train_vectors"]
