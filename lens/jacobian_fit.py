"""Fitting a Jacobian lens on store passes (Gurnee et al. 2026; the estimator of
TransformerLens 4's ``JacobianLens.fit``, which follows Anthropic's reference code).

The convention (TransformerLens 4's, the default and only one here): for each context
``c`` of ``T`` tokens (BOS at position 0) the valid positions are
``V = {skip, ..., T - 2}`` (the first ``skip`` positions, BOS and attention sinks, and the
last position, which has no next token, are left out; packed contexts have no padding),
and

    J_l = mean_c [ (1/|V|) sum_{t in V} sum_{t' in V, t' >= t} d h_final[c, t'] / d h_l[c, t] ]

that is, the effect of source position ``t`` on every valid later target position is
summed (the cross-position terms are kept), and source positions, then contexts, are
averaged. ``h_final`` is the last block's output before the final norm. TransformerLens's
docstring states this formula and its code computes it; the paper itself was not
available offline to check against, so no second convention is offered.

How: the store runs each batch of contexts (:func:`interlayer.store.collect.stream` with
edits). An edit at the first source layer turns autograd on and makes its output a leaf;
the edit at the last layer takes ``d_model`` vector-Jacobian products, one per output
dimension ``i`` with a one-hot cotangent on every valid target position, and adds the
source-position sums of the gradients at every source layer to row ``i`` of each layer's
running sum (float64). Per-token Jacobians never exist: memory is the graph of one batch
(``batch_size`` contexts) plus ``n_sources x d_model^2`` sums. After each batch the sums
are checkpointed atomically, so an interrupted fit resumes to the same ``J``.

The convergence CSV has one row per batch and layer: ``batch``, ``contexts`` (so far),
``layer`` and ``rel_change = ||M_k - M_{k-1}||_F / ||M_k||_F``, where ``M_k`` is the
running mean of ``J_l`` after batch ``k`` (empty for the first batch).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import math
from pathlib import Path
from typing import Any

import torch

from interlayer.errors import InterlayerError
from interlayer.io.checkpointing import check_resume_identity
from interlayer.io.files import write_atomic, write_text_atomic
from interlayer.model.adapter import ModelAdapter
from interlayer.options import CONTEXT_LENGTH, resolve_layers
from interlayer.progress import tqdm

from .jacobian import JacobianLens
from .tuning_options import JacobianOptions

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
CONVERGENCE = "convergence.csv"


class _Sums:
    """Running float64 sums of per-context mean Jacobians, and the convergence rows."""

    def __init__(self, layers: list[int], d_model: int) -> None:
        self.layers = layers
        self.sums = {l: torch.zeros(d_model, d_model, dtype=torch.float64) for l in layers}
        self.contexts, self.batches, self.positions = 0, 0, 0
        self.rows: list[dict[str, Any]] = []

    def add(self, batch_sums: dict[int, torch.Tensor], contexts: int, positions: int) -> None:
        """Add one batch's sums over contexts of per-context means; log its convergence rows."""
        before = {l: self.sums[l] / self.contexts for l in self.layers} if self.contexts else None
        for l in self.layers:
            self.sums[l] += batch_sums[l]
        self.contexts += contexts
        self.positions += positions
        self.batches += 1
        for l in self.layers:
            mean = self.sums[l] / self.contexts
            change = "" if before is None else float((mean - before[l]).norm() / mean.norm().clamp_min(1e-30))
            self.rows.append({"batch": self.batches, "contexts": self.contexts, "layer": l, "rel_change": change})

    def state(self) -> dict[str, Any]:
        """What a checkpoint holds."""
        return {"sums": self.sums, "contexts": self.contexts, "batches": self.batches, "positions": self.positions, "rows": self.rows}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state`."""
        self.sums = {int(l): s for l, s in state["sums"].items()}
        self.contexts, self.batches, self.rows = int(state["contexts"]), int(state["batches"]), list(state["rows"])
        self.positions = int(state["positions"])


def full_contexts(model: ModelAdapter, data: Any, n_contexts: int, context_length: int,
                  text_field: str = "text") -> torch.Tensor:
    """``[n, context_length]`` token ids: the first ``n_contexts`` packed contexts of ``data`` that
    are full length (the store's packing: BOS, then documents with EOS, cut every
    ``context_length`` tokens), so no context is padded."""
    from interlayer.store.inputs import Tokenized

    rows: list[torch.Tensor] = []
    for context in Tokenized(model).packed(data, context_length, text_field):
        if len(context.ids) == context_length:
            rows.append(torch.as_tensor(context.ids, dtype=torch.long))
        if len(rows) == n_contexts:
            break
    if not rows:
        raise InterlayerError(f"the data hold no full context of {context_length} tokens; give more text or a "
                              "smaller context_length")
    if len(rows) < n_contexts:
        log.warning("the data hold %d full contexts of %d tokens, fewer than the %d asked for",
                    len(rows), context_length, n_contexts)
    return torch.stack(rows)


class _Pass:
    """The store edits of one fit: a leaf at the first source layer, the source tensors
    kept, and the vector-Jacobian products taken at the last layer."""

    def __init__(self, model: ModelAdapter, layers: list[int], skip: int, length: int, sums: _Sums) -> None:
        self.model, self.layers, self.sums = model, layers, sums
        self.valid = torch.arange(skip, length - 1)
        self.kept: dict[int, torch.Tensor] = {}

    def edits(self) -> dict[str, Any]:
        """``{site: fn}`` for :func:`~interlayer.store.collect.stream`."""
        out: dict[str, Any] = {f"resid_post.{l}": self._keeper(l) for l in self.layers}
        out[f"resid_post.{self.model.n_layers - 1}"] = self._differentiate
        return out

    def _keeper(self, layer: int) -> Any:
        first = layer == self.layers[0]

        def keep(x: torch.Tensor) -> torch.Tensor | None:
            if first:  # the store's pass runs under no_grad: the blocks after this one record a graph
                torch.set_grad_enabled(True)
                x = x.detach().requires_grad_(True)
            self.kept[layer] = x
            return x if first else None

        return keep

    def _differentiate(self, final: torch.Tensor) -> torch.Tensor:
        sources = [self.kept[l] for l in self.layers]
        valid = self.valid.to(final.device)
        d = final.shape[-1]
        rows = {l: torch.zeros(d, d, dtype=torch.float64) for l in self.layers}
        cotangent = torch.zeros_like(final)
        for i in range(d):
            cotangent.zero_()
            cotangent[:, valid, i] = 1.0
            grads = torch.autograd.grad(final, sources, cotangent, retain_graph=i < d - 1)
            for l, grad in zip(self.layers, grads):
                rows[l][i] = grad[:, valid].double().sum((0, 1)).cpu()
        torch.set_grad_enabled(False)
        self.kept.clear()
        self.sums.add({l: r / len(valid) for l, r in rows.items()}, int(final.shape[0]), int(final.shape[0]) * len(valid))
        return final.detach()


def _identity(model: ModelAdapter, layers: list[int], cfg: JacobianOptions, n_contexts: int, context_length: int,
              data: str) -> dict[str, Any]:
    return {"model": model.name, "weights_sha256": model.weights_sha256(), "layers": layers,
            "skip_first": cfg.skip_first, "batch_size": cfg.batch_size, "contexts": n_contexts,
            "context_length": context_length, "data": data}


def _save_checkpoint(path: Path, identity: dict[str, Any], sums: _Sums) -> None:
    buffer = io.BytesIO()
    torch.save({"identity": identity, **sums.state()}, buffer)
    write_atomic(path, buffer.getvalue())


def write_convergence(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write the convergence rows (``batch, contexts, layer, rel_change``) as CSV, atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["batch", "contexts", "layer", "rel_change"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, text.getvalue())


def fit_jacobian_lens(model: ModelAdapter, data: Any = None, options: JacobianOptions | None = None, *,
                      tokens: int = 4096, context_length: int = CONTEXT_LENGTH, text_field: str = "text",
                      out: str | Path | None = None, progress: bool = True) -> JacobianLens:
    """Fit a :class:`JacobianLens` on the full packed contexts of ``data`` (default: the packaged
    sample text) that hold ``tokens`` tokens, as the module docstring says.

    With ``out`` (a directory) it writes ``checkpoint.pt`` after every batch of contexts (and
    resumes from one it finds, refusing one of another fit), ``convergence.csv`` and, at the
    end, ``lens.pt``, removing the spent checkpoint. ``options`` (:class:`JacobianOptions`)
    say which layers, how many leading positions to skip and how many contexts per pass.
    """
    from interlayer.model.loading import SAMPLE_TEXT
    from interlayer.store.collect import stream
    from interlayer.store.inputs import contexts_for_tokens

    cfg = options if options is not None else JacobianOptions()
    if not isinstance(cfg, JacobianOptions):
        raise InterlayerError(f"options must be JacobianOptions, got {type(cfg).__name__}")
    layers = _source_layers(model, cfg)
    if not 0 <= cfg.skip_first <= context_length - 2:
        raise InterlayerError(f"skip_first={cfg.skip_first} leaves no valid position in contexts of "
                              f"{context_length} tokens; valid values are 0..{context_length - 2}")
    data = data or str(SAMPLE_TEXT)
    ids = full_contexts(model, data, contexts_for_tokens(model, tokens, context_length), context_length, text_field)
    identity = _identity(model, layers, cfg, len(ids), context_length, str(data))
    sums = _Sums(layers, model.d_model)
    ckpt = Path(out) / CHECKPOINT if out is not None else None
    if ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        check_resume_identity(state["identity"], identity, what="Jacobian-lens fit", path=ckpt)
        sums.restore(state)
        log.info("resuming the Jacobian-lens fit after %d contexts", sums.contexts)
    _run(model, ids, layers, cfg, sums, identity, ckpt, progress, stream)
    provenance = {"model": model.name, "weights_sha256": model.weights_sha256(),
                  "tokens": int(ids[: sums.contexts].numel()), "source_positions": sums.positions,
                  "contexts": sums.contexts, "context_length": context_length, "skip_first": cfg.skip_first,
                  "targets": "following", "data": str(data), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                  "interlayer_version": _version()}
    lens = JacobianLens({l: (s / sums.contexts).float() for l, s in sums.sums.items()}, model.d_model,
                        model.n_layers, sums.contexts, provenance)
    if out is not None:
        write_convergence(Path(out) / CONVERGENCE, sums.rows)
        lens.save(Path(out))
        ckpt.unlink(missing_ok=True)  # the fit finished; its checkpoint is spent
    lens.convergence = sums.rows
    return lens


def _run(model: ModelAdapter, ids: torch.Tensor, layers: list[int], cfg: JacobianOptions, sums: _Sums,
         identity: dict[str, Any], ckpt: Path | None, progress: bool, stream: Any) -> None:
    """The store passes over the contexts not yet done, a checkpoint after each batch."""
    todo = ids[sums.contexts:]
    if not len(todo):
        return
    fit = _Pass(model, layers, cfg.skip_first, ids.shape[1], sums)
    frozen = [p.requires_grad for p in model.model.parameters()]
    for p in model.model.parameters():
        p.requires_grad_(False)  # the graph starts at the residual stream, not at the weights
    bar = tqdm(total=len(ids), initial=sums.contexts, unit="ctx", desc="jacobian lens", disable=not progress)
    try:
        done = sums.contexts
        chunks = stream(model, todo, [f"resid_post.{model.n_layers - 1}"], select="last", batch_size=cfg.batch_size,
                        rows_per_chunk=cfg.batch_size, edits=fit.edits(), progress=False,
                        check_edits=False)  # its "edits" are autograd hooks that return their input
        for _ in chunks:
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                _save_checkpoint(ckpt, identity, sums)
                write_convergence(ckpt.parent / CONVERGENCE, sums.rows)
            bar.update(sums.contexts - done)
            done = sums.contexts
    finally:
        bar.close()
        for p, flag in zip(model.model.parameters(), frozen):
            p.requires_grad_(flag)


def _source_layers(model: ModelAdapter, cfg: JacobianOptions) -> list[int]:
    layers = list(range(model.n_layers - 1)) if cfg.layers == "all" else resolve_layers(cfg.layers, model.n_layers)
    bad = [l for l in layers if not 0 <= l < model.n_layers - 1]
    if bad or not layers:
        raise InterlayerError(f"Jacobian-lens layers {bad or layers} are out of range; valid layers are "
                              f"0..{model.n_layers - 2} (the last layer is the model's own output)")
    return sorted(set(layers))


def _version() -> str:
    import interlayer

    return str(getattr(interlayer, "__version__", "unknown"))


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b||_F / ||b||_F``: how tests and benchmarks compare two fits."""
    return float((a - b).norm() / b.norm().clamp_min(1e-30)) if b.numel() else math.nan
