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

A saved vector (:meth:`SteeringVector.save`) carries a sha256 checksum of its tensors in
its metadata; :meth:`SteeringVector.load` verifies it, and refuses directions that are not
finite, not one ``[d_model]`` vector each, or not unit-norm while marked ``normalized``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save

from interlayer.store.collect import collect
from interlayer.model.adapter import ModelAdapter
from interlayer.errors import InterlayerError, choices
from interlayer.io.files import write_atomic
from interlayer.model.sites import SITE_KINDS

from .datasets import ContrastPair, check_balance, load_pairs

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("mean_diff", "pca", "logistic")
READS: tuple[str, ...] = ("last", "answer", "mean")
FORMAT = 1
UNIT_TOLERANCE = 1e-4
"""How far from 1 a direction's norm may be in a vector marked ``normalized``."""
_LAYER_NAME = re.compile(r"^direction\.(\d+)$")


class SteeringFileError(InterlayerError):
    """A steering-vector file that is damaged, malformed or not a steering vector."""


def directions_sha256(directions: dict[int, torch.Tensor]) -> str:
    """Hex sha256 of the directions as saved: each layer's name, shape and float32 bytes,
    in layer order (what :meth:`SteeringVector.save` stores and :meth:`~SteeringVector.load`
    checks)."""
    digest = hashlib.sha256()
    for layer in sorted(directions):
        v = directions[layer].detach().float().cpu().contiguous()
        digest.update(f"direction.{layer}:{list(v.shape)}\n".encode())
        digest.update(v.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class SteeringVector:
    """One direction per layer at one site kind, with where it came from.

    ``directions[l]`` is a float32 ``[d_model]`` tensor to add at ``{site}.{l}``.
    """

    directions: dict[int, torch.Tensor]
    site: str = "resid_post"
    method: str = "mean_diff"
    read: str = "last"
    normalized: bool | None = None
    """Whether every direction is unit-norm. ``None`` (the default) reads it from the
    norms; ``True`` is checked (within :data:`UNIT_TOLERANCE`)."""
    model: str = ""
    weights_sha256: str = ""
    dataset: str = ""
    n_pairs: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    chat: bool | None = None
    """Whether the pairs were read through the model's chat template (``None``: unknown)."""

    def __post_init__(self) -> None:
        if not isinstance(self.directions, dict) or not self.directions:
            raise InterlayerError("a steering vector needs at least one layer")
        if self.site not in SITE_KINDS:
            raise InterlayerError(f"unknown site kind {self.site!r}; valid kinds: {choices(SITE_KINDS)}")
        for layer, v in self.directions.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
                raise InterlayerError(f"layer {layer!r} of a steering vector must be an integer >= 0")
            if not isinstance(v, torch.Tensor) or not v.is_floating_point():
                kind = f"a {v.dtype} tensor" if isinstance(v, torch.Tensor) else type(v).__name__
                raise InterlayerError(f"layer {layer}'s direction must be a float tensor, got {kind}")
        widths = {int(v.shape[-1]) if v.dim() else 0 for v in self.directions.values()}
        if len(widths) != 1 or any(v.dim() != 1 for v in self.directions.values()):
            shapes = sorted({str(list(v.shape)) for v in self.directions.values()})
            raise InterlayerError("every layer's direction must be one [d_model] vector of the same width, "
                                  f"got shape(s) {', '.join(shapes)}")
        self.directions = {int(l): v.detach().float().cpu() for l, v in sorted(self.directions.items())}
        for layer, v in self.directions.items():
            bad = int((~torch.isfinite(v)).sum())
            if bad:
                raise InterlayerError(f"layer {layer}'s direction holds {bad} NaN or infinite value(s) of {v.numel()}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise InterlayerError(f"chat must be True, False or None (unknown), got {self.chat!r}")
        if not isinstance(self.n_pairs, int) or isinstance(self.n_pairs, bool) or self.n_pairs < 0:
            raise InterlayerError(f"n_pairs must be an integer >= 0, got {self.n_pairs!r}")
        off = {l: float(v.norm()) for l, v in self.directions.items() if abs(float(v.norm()) - 1.0) > UNIT_TOLERANCE}
        if self.normalized is None:
            self.normalized = not off
        elif self.normalized and off:
            layer, norm = next(iter(off.items()))
            raise InterlayerError(f"the vector is marked normalized, but layer {layer}'s direction has norm {norm:.6g} "
                                  "(not 1); normalise it or pass normalized=False")

    @property
    def layers(self) -> list[int]:
        return list(self.directions)

    @property
    def d_model(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise InterlayerError(f"this vector has no layer {layer}; its layers: {self.layers}")
        return self.directions[layer]

    def site_name(self, layer: int) -> str:
        return f"{self.site}.{layer}"

    def check_model(self, model: ModelAdapter) -> None:
        """Refuse a model of another width, or one without these layers or this site."""
        if self.d_model != model.d_model:
            raise InterlayerError(f"the vector has d_model={self.d_model}, but {model.name} has d_model={model.d_model}")
        beyond = [l for l in self.layers if l >= model.n_layers]
        if beyond:
            from interlayer.errors import LayerIndexError

            raise LayerIndexError(f"the vector has layer {beyond[0]}, but {model.name} has {model.n_layers} layers; "
                                  f"valid layers are 0..{model.n_layers - 1}")
        for layer in self.layers:
            model.site(self.site_name(layer))  # names the valid layers and kinds

    def norms(self) -> pd.DataFrame:
        return pd.DataFrame({"layer": self.layers, "norm": [float(v.norm()) for v in self.directions.values()]})

    # ------------------------------------------------------------ save / load
    def metadata(self) -> dict[str, str]:
        """The provenance as string metadata (safetensors' and the GGUF ``interlayer.metadata``
        schema), with ``sha256``: the checksum of the directions (:func:`directions_sha256`)."""
        return {"format": str(FORMAT), "site": self.site, "method": self.method, "read": self.read,
                "normalized": json.dumps(self.normalized), "model": self.model, "weights_sha256": self.weights_sha256,
                "dataset": self.dataset, "n_pairs": str(self.n_pairs), "layers": json.dumps(self.layers),
                "extra": json.dumps(self.extra), "chat": json.dumps(self.chat),
                "sha256": directions_sha256(self.directions)}

    def save(self, path: str | Path) -> Path:
        """One safetensors file: ``direction.{layer}`` tensors, the provenance and a sha256
        checksum of the tensors as metadata; atomic (missing parent folders are made)."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise InterlayerError(f"{path}: a steering vector is saved as .safetensors")
        tensors = {f"direction.{l}": v.contiguous() for l, v in self.directions.items()}
        write_atomic(path, save(tensors, metadata=self.metadata()))
        return path

    @classmethod
    def load(cls, path: str | Path, model: ModelAdapter | None = None) -> "SteeringVector":
        """Load a vector saved by :meth:`save`; with ``model``, refuse one that does not fit it.

        A damaged or malformed file is a :class:`SteeringFileError` naming it: a checksum
        that does not match the tensors, directions that are not finite or not one
        ``[d_model]`` vector each, a vector marked ``normalized`` whose norms are not 1,
        tensors not named ``direction.<layer>``, or metadata that does not parse. Files
        saved before checksums were stored load with a logged note."""
        path = Path(path)
        if not path.is_file():
            raise InterlayerError(f"steering vector {str(path)!r} does not exist")
        try:
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata() or {}
                tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except Exception as err:  # safetensors raises its own error types for a file that is not one
            raise SteeringFileError(f"{path} is not a safetensors steering vector ({err})") from err
        if meta.get("format") != str(FORMAT) or not tensors or any(not k.startswith("direction.") for k in tensors):
            raise SteeringFileError(f"{path} is not an interlayer steering vector (format {FORMAT}, "
                                    "direction.<layer> tensors)")
        if "site" not in meta:
            raise SteeringFileError(f"{path}: the metadata names no 'site' (e.g. 'resid_post'); "
                                    "it is not a complete steering vector")
        directions = {}
        for name, tensor in tensors.items():
            match = _LAYER_NAME.match(name)
            if match is None:
                raise SteeringFileError(f"{path}: tensor {name!r} is not named direction.<layer> (a layer number)")
            directions[int(match.group(1))] = tensor
        vector = from_metadata(directions, meta, str(path))
        if model is not None:
            try:
                vector.check_model(model)
            except InterlayerError as err:
                raise type(err)(f"{path}: {err}") from None
        return vector


def _meta_string(meta: dict[str, Any], key: str, source: str, default: str) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise SteeringFileError(f"{source}: metadata field {key!r} must be a string, got {type(value).__name__} "
                                f"{value!r}")
    return value


def _meta_json(meta: dict[str, Any], key: str, source: str, default: Any, types: tuple[type, ...], what: str) -> Any:
    if key not in meta:
        return default
    text = _meta_string(meta, key, source, "")
    try:
        value = json.loads(text)
    except ValueError:
        raise SteeringFileError(f"{source}: metadata field {key!r} is not valid JSON ({text[:40]!r}); "
                                f"expected {what}") from None
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise SteeringFileError(f"{source}: metadata field {key!r} is {text[:40]!r}; expected {what}")
    return value


def from_metadata(directions: dict[int, torch.Tensor], meta: dict[str, Any], source: str,
                  defaults: dict[str, Any] | None = None) -> SteeringVector:
    """A :class:`SteeringVector` from a file's ``directions`` and string ``meta`` (the
    :meth:`SteeringVector.metadata` schema), checked: ``sha256`` (when present) against the
    directions, every field's type, the directions themselves. Any problem is one
    :class:`SteeringFileError` naming ``source``. ``defaults`` fill fields the metadata lacks."""
    defaults = defaults or {}
    for layer, tensor in directions.items():
        if tensor.dim() != 1:
            raise SteeringFileError(f"{source}: direction.{layer} has shape {list(tensor.shape)}; "
                                    "expected one [d_model] vector per layer")
    expected = _meta_string(meta, "sha256", source, "")
    if expected:
        got = directions_sha256(directions)
        if got != expected:
            raise SteeringFileError(f"{source} is damaged: its tensors' sha256 is {got[:12]}..., but the file "
                                    f"records {expected[:12]}...; retrain or re-export the vector")
    else:
        log.info("%s carries no checksum (written before interlayer stored one, or by another tool); "
                 "its values and norms are checked", source)
    n_pairs = _meta_string(meta, "n_pairs", source, str(defaults.get("n_pairs", 0)))
    if not (n_pairs.isascii() and n_pairs.isdigit()):
        raise SteeringFileError(f"{source}: metadata field 'n_pairs' is {n_pairs[:40]!r}; expected a whole number >= 0")
    layers = _meta_json(meta, "layers", source, None, (list,), "a JSON list of layer numbers")
    if layers is not None and (not all(isinstance(l, int) and not isinstance(l, bool) for l in layers)
                               or sorted(layers) != sorted(directions)):
        raise SteeringFileError(f"{source}: the metadata lists layers {layers}, but the file holds directions for "
                                f"{sorted(directions)}")
    extra = _meta_json(meta, "extra", source, {}, (dict,), "a JSON object")
    chat = _meta_json(meta, "chat", source, extra.get("chat"), (bool, type(None)), "true, false or null")
    extra = {k: v for k, v in extra.items() if k != "chat"}
    normalized = _meta_json(meta, "normalized", source, None, (bool,), "true or false")
    for layer, tensor in directions.items():
        norm = float(tensor.float().norm())
        if normalized and math.isfinite(norm) and abs(norm - 1.0) > UNIT_TOLERANCE:
            raise SteeringFileError(f"{source} is marked normalized, but its direction at layer {layer} has norm "
                                    f"{norm:.6g}, not 1: the file is damaged (or its flag is wrong; load the tensors "
                                    "and save them with normalized=False)")
    try:
        return SteeringVector(
            directions, site=_meta_string(meta, "site", source, defaults.get("site", "resid_post")),
            method=_meta_string(meta, "method", source, defaults.get("method", "unknown")),
            read=_meta_string(meta, "read", source, defaults.get("read", "last")),
            normalized=normalized,
            model=_meta_string(meta, "model", source, defaults.get("model", "")),
            weights_sha256=_meta_string(meta, "weights_sha256", source, ""),
            dataset=_meta_string(meta, "dataset", source, defaults.get("dataset", "")),
            n_pairs=int(n_pairs), extra={**defaults.get("extra", {}), **extra}, chat=chat)
    except SteeringFileError:
        raise
    except InterlayerError as err:
        raise SteeringFileError(f"{source}: {err}") from None


# ---------------------------------------------------------------- reading
def prompt_text(model: ModelAdapter, question: str, chat: bool = False) -> str:
    """The text a question is asked as: the question itself, or with ``chat`` the model's
    chat template around it as a user turn, ending where the assistant's answer begins."""
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer; steering data is text")
    if not chat:
        return question
    if not getattr(model.tokenizer, "chat_template", None):
        raise InterlayerError(f"{model.name}'s tokenizer has no chat template; use the plain format (chat=False)")
    return model.tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)


def encode(model: ModelAdapter, text: str, chat: bool = False) -> list[int]:
    """Token ids of a prompt text (special tokens added unless the chat template wrote them)."""
    return list(model.tokenizer(text, add_special_tokens=not chat).input_ids)


def pair_texts(model: ModelAdapter, pairs: Sequence[ContrastPair],
               chat: bool = False) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """Token ids of question + matching and question + non-matching answer, and where each
    answer starts (the length of the tokenised question)."""
    pos, neg, starts = [], [], []
    for pair in pairs:
        prompt = prompt_text(model, pair.question, chat)
        question = encode(model, prompt, chat)
        pos.append(encode(model, prompt + _joined(pair.matching, chat), chat))
        neg.append(encode(model, prompt + _joined(pair.not_matching, chat), chat))
        starts.append(min(len(question), len(pos[-1]) - 1, len(neg[-1]) - 1))
    return pos, neg, starts


def _joined(answer: str, chat: bool = False) -> str:
    """An answer as it follows its question: after a space unless it brings its own (in a
    chat template the answer opens the assistant's turn, with no space)."""
    if chat:
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
                  n: int | None = None, chat: bool = False, batch_size: int = 8,
                  progress: bool = True) -> SteeringVector:
    """Steering vectors at ``layers`` of ``site`` from a dataset name (see
    :mod:`interlayer.steering.datasets`) or a list of :class:`ContrastPair`; one store pass
    reads every layer. See the module docstring for the methods. With ``chat`` each
    question is asked through the model's chat template (instruct models); the vector
    records it (:attr:`SteeringVector.chat`)."""
    if method not in METHODS:
        raise InterlayerError(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    if read not in READS:
        raise InterlayerError(f"unknown read position {read!r}; valid choices: {choices(READS)}")
    if site not in SITE_KINDS:
        raise InterlayerError(f"unknown site kind {site!r}; valid kinds: {choices(SITE_KINDS)}")
    layer_list = list(range(model.n_layers)) if layers == "all" else [model.check_layer(int(l)) for l in layers]
    for layer in layer_list:
        model.site(f"{site}.{layer}")
    name = dataset if isinstance(dataset, str) else "custom"
    pairs = load_pairs(dataset, "generate", n) if isinstance(dataset, str) else list(dataset)[:n]
    if len(pairs) < 2:
        raise InterlayerError(f"need at least 2 contrast pairs, got {len(pairs)}")
    check_balance(pairs)
    pos_ids, neg_ids, starts = pair_texts(model, pairs, chat)
    sites = [f"{site}.{l}" for l in layer_list]
    acts = read_activations(model, pos_ids + neg_ids, starts + starts, sites, read, batch_size, progress)
    n_pairs = len(pairs)
    directions = {layer: direction(acts[i, :n_pairs], acts[i, n_pairs:], method, normalize)
                  for i, layer in enumerate(layer_list)}
    return SteeringVector(directions, site=site, method=method, read=read, normalized=normalize, model=model.name,
                          weights_sha256=model.weights_sha256(), dataset=name, n_pairs=n_pairs, chat=bool(chat))


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
