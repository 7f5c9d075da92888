"""Layer decoding: the one path every lens, probe and score uses to turn a hidden
state into a distribution over the vocabulary.

A hidden state ``h`` at any layer is decoded exactly as the model decodes its last
layer (nostalgebraist 2020, "interpreting GPT: the logit lens"):
``logits = softcap(W_U · norm_final(h))``. The work is done in chunks of rows so
that ``[layers x positions x vocab]`` never exists at once; with Gemma's 262,144-token
vocabulary the naive way needs about 1 MiB per (layer, position) pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from .progress import tqdm

from .decode_outputs import DecodeResult, _Outputs, _Reference
from .model.adapter import ModelAdapter
from .errors import InterlayerError

DEFAULT_MEMORY_MB = 256.0
"""Default bound on the working memory of one decoding chunk."""

_WORK_COPIES = 5
"""Vocabulary-sized float32 buffers alive per row while a chunk is decoded (logits and
log-probs, then log-probs, probs, a product and a spare), plus one per KL reference row."""


@runtime_checkable
class Lens(Protocol):
    """What every lens is: a per-layer transform of hidden states applied before the
    model's own head (tuned-lens's ``Lens``; Belrose et al. 2023).

    ``transform(hidden, layer)`` maps ``[..., d_model]`` states of decoder layer
    ``layer`` (``resid_post.layer``; ``None``: the embedding output ``resid_pre.0``, as in
    :mod:`interlayer.layers`, or a caller that did not say, which a lens with an embedding
    translator refuses before decoding) to states the
    final norm and unembedding decode. ``name`` labels results ("logit", "tuned").
    Anything with these two members is a lens, and every method that decodes takes one.
    """

    name: str

    def transform(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        """``hidden`` (``[..., d_model]``, decoder layer ``layer``) mapped to states the
        model's final norm and unembedding decode; the same shape."""
        ...


class LogitLens:
    """The identity transform (nostalgebraist 2020): each layer decoded by the model's
    head as is. The default lens everywhere."""

    name = "logit"

    def transform(self, hidden: torch.Tensor, layer: int | None) -> torch.Tensor:
        """Return ``hidden`` unchanged (the model's head decodes every layer as is); ``layer`` is ignored."""
        return hidden

    def __repr__(self) -> str:
        return "LogitLens()"


LOGIT_LENS = LogitLens()


class LayerDecoder:
    """Decode hidden states through a lens and the model's own final norm and unembedding.

    Args:
        model: the adapter whose head decodes.
        memory_mb: bound on the working memory of one chunk, in MiB. Rows per chunk
            are chosen so vocabulary-sized buffers stay within it.
        lens: a :class:`Lens`, applied per layer before the head; the
            :class:`LogitLens` by default, or e.g. a :class:`interlayer.lens.TunedLens`.
    """

    def __init__(self, model: ModelAdapter, memory_mb: float = DEFAULT_MEMORY_MB, lens: Lens = LOGIT_LENS) -> None:
        if not memory_mb > 0:
            raise InterlayerError(f"memory_mb must be positive, got {memory_mb!r}")
        if not isinstance(lens, Lens):
            raise InterlayerError(f"lens must have a name and a transform(hidden, layer) method (a Lens), "
                                  f"got {type(lens).__name__}")
        self.model = model
        self.memory_mb = float(memory_mb)
        self.lens = lens

    def rows_per_chunk(self, with_reference: bool = False) -> int:
        """Rows decoded together: the most that fit in ``memory_mb`` (at least one)."""
        copies = _WORK_COPIES + (1 if with_reference else 0)
        per_row = self.model.vocab_size * 4 * copies
        return max(1, int(self.memory_mb * 2**20 // per_row))

    def logits(self, hidden: torch.Tensor, layer: int | None = None, *, grad: bool = False) -> torch.Tensor:
        """float32 logits of ``hidden`` ``[..., d_model]`` from ``layer``, unchunked:
        the lens transform for that layer, then the model's own head. With ``grad``
        the graph is kept (to train a lens through the frozen head)."""
        with torch.set_grad_enabled(grad):
            hidden = self.lens.transform(hidden.to(self.model.device), layer)
            return self.model.unembed_resid(hidden).float()

    def layer_logits(self, hidden: torch.Tensor, layers: Sequence[int | None], *, grad: bool = False) -> torch.Tensor:
        """float32 logits ``[len(layers), n, vocab]`` of ``hidden`` ``[len(layers), n, d_model]``,
        unchunked: each slice through the lens for its layer, then all rows through the head
        in one call (the unembedding is read once: what bounds decoding a few rows of many
        layers, e.g. at every generation step)."""
        if hidden.dim() != 3 or hidden.shape[0] != len(layers):
            raise InterlayerError(f"hidden must be [len(layers)={len(layers)}, n, d_model], got {tuple(hidden.shape)}")
        with torch.set_grad_enabled(grad):
            hidden = hidden.to(self.model.device)
            moved = torch.stack([self.lens.transform(hidden[i], layer) for i, layer in enumerate(layers)])
            logits = self.model.head_rows(moved.reshape(-1, moved.shape[-1])).float().contiguous()
            return logits.reshape(len(layers), hidden.shape[1], -1)

    def log_probs(self, hidden: torch.Tensor, layer: int | None = None, *, grad: bool = False) -> torch.Tensor:
        """float32 log-probabilities of ``hidden`` from ``layer``, unchunked (see :meth:`logits`)."""
        return torch.log_softmax(self.logits(hidden, layer, grad=grad), dim=-1)

    def from_normed(self, normed: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """float32 logits ``[..., vocab]`` of states ``[..., d_model]`` already through the final
        norm (``ln_final``): the unembedding and the soft-cap ``c · tanh(z / c)``, no lens and
        no norm. Rows go through the head ``rows_per_chunk()`` at a time; the result is on the
        model's device. This is what a method calls instead of ``model.head``."""
        lead = normed.shape[:-1]
        flat = normed.reshape(-1, normed.shape[-1])
        step = self.rows_per_chunk()
        with torch.set_grad_enabled(grad):
            chunks = [self.model.head(flat[start:start + step].to(self.model.device)).float()
                      for start in range(0, max(1, flat.shape[0]), step)]  # one (empty) chunk at least
        return torch.cat(chunks).reshape(*lead, -1)

    def next_token_nll(self, hidden: torch.Tensor, targets: torch.Tensor, layer: int | None = None, *,
                       normed: bool = False, mask: torch.Tensor | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Per-position negative log-likelihood ``-log softmax(logits)[target]`` (nats), in chunks.

        Args:
            hidden: ``[*lead, d_model]`` states; decoded through the lens for ``layer`` and
                the model's head (as :meth:`logits`), or with ``normed`` already final-normed
                (as :meth:`from_normed`).
            targets: ``[*lead]`` token ids, one per state (e.g. the next token).
            layer: the layer of the states, passed to the lens (``None``: the final state).
            normed: the states are ``ln_final`` outputs: skip the lens and the norm.
            mask: ``[*lead]`` booleans; only these positions are decoded, the rest are 0.
            dtype: the float type of the log-softmax (the logits are float32 first);
                ``torch.float64`` where a caller scores in double precision.

        Returns ``[*lead]`` on the CPU in ``dtype``. At most ``rows_per_chunk()`` rows of
        vocabulary-sized logits exist at once.
        """
        lead = hidden.shape[:-1]
        if tuple(targets.shape) != tuple(lead):
            raise InterlayerError(f"targets must have the leading shape of hidden {tuple(lead)}, "
                                  f"got {tuple(targets.shape)}")
        keep = torch.ones(lead, dtype=torch.bool) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if tuple(keep.shape) != tuple(lead):
            raise InterlayerError(f"mask must have the leading shape of hidden {tuple(lead)}, got {tuple(keep.shape)}")
        keep = keep.reshape(-1).cpu()
        rows = hidden.reshape(-1, hidden.shape[-1])[keep.to(hidden.device)]
        goal = self._check_ids(targets.reshape(-1)[keep.to(targets.device)], "targets")
        out, picked = torch.zeros(keep.shape[0], dtype=dtype), torch.zeros(rows.shape[0], dtype=dtype)
        step = self.rows_per_chunk()
        with torch.no_grad():
            for start in range(0, rows.shape[0], step):
                chunk = rows[start:start + step]
                logits = self.from_normed(chunk) if normed else self.logits(chunk, layer)
                picked[start:start + step] = _target_nll(logits.to(dtype), goal[start:start + step]).cpu()
        out[keep] = picked
        return out.reshape(lead)

    def variant_nll_and_kl(self, normed: Sequence[torch.Tensor], targets: torch.Tensor, *,
                           rows_per_step: int) -> tuple[list[float], list[float]]:
        """Summed next-token NLL of each variant's final-normed rows, and summed
        KL(variant 0 || variant v), from one log-softmax per variant and chunk:
        ``-sum_t log softmax(z_v)[t]`` and ``sum p_0 (log p_0 - log p_v)``.

        ``normed`` holds ``[n, d_model]`` rows per variant (``ln_final`` of a clean pass
        first, then e.g. an SAE-spliced and a zero-ablated pass over the same positions),
        ``targets`` the ``[n]`` next-token ids; ``rows_per_step`` rows of logits at a time.
        Sums are accumulated in float64; ``kl[0]`` is 0."""
        nll, kl = [0.0] * len(normed), [0.0] * len(normed)
        targets = targets.to(self.model.device)
        for start in range(0, len(targets), rows_per_step):
            stop = start + rows_per_step
            goal = targets[start:stop, None]
            reference = torch.log_softmax(self.from_normed(normed[0][start:stop]), -1)
            nll[0] += float(-reference.gather(-1, goal)[:, 0].double().sum())
            p_ref = reference.exp()
            for v in range(1, len(normed)):
                logp = torch.log_softmax(self.from_normed(normed[v][start:stop]), -1)
                nll[v] += float(-logp.gather(-1, goal)[:, 0].double().sum())
                kl[v] += float((p_ref * (reference - logp)).sum(-1).double().sum())
        return nll, kl

    def decode(
        self,
        hidden: torch.Tensor,
        *,
        top_k: int = 0,
        entropy: bool = False,
        reference: torch.Tensor | None = None,
        token_ids: Sequence[int] | torch.Tensor | None = None,
        probs: bool = False,
        layers: Sequence[int | None] | None = None,
        targets: torch.Tensor | None = None,
        ranks: bool = False,
        progress: bool = False,
    ) -> DecodeResult:
        """Decode ``hidden`` of shape ``[*lead, n, d_model]`` in memory-bounded chunks.

        Args:
            hidden: residual-stream states; e.g. ``[layers, positions, d]``.
            top_k: return the ``k`` most probable tokens and their probabilities.
            entropy: return the entropy of each distribution.
            reference: ``[n, d_model]`` states whose distributions are the KL
                reference, shared across ``*lead`` (usually ``resid_post`` of the
                last layer at the same positions). Returns KL(reference || decoded).
            token_ids: ids whose log-probabilities to return, normalised over the
                whole vocabulary, and the log of their summed probability.
            probs: also return the full distributions (this is ``[*lead, n, vocab]``
                on the CPU; ask only for what fits).
            layers: the layer of each ``[n, d]`` slice of ``hidden`` (its leading
                dimensions flattened), passed to the lens; a lens that depends on the
                layer (a tuned lens) needs it; ``None`` is the embedding output. The reference is always decoded as the
                final layer, through no lens.
            targets: ``[n]`` one token id per position (shared across ``*lead``), whose
                log-probability to return, e.g. the true next token for a cross-entropy.
            ranks: also return the rank of each of ``token_ids`` (one vocabulary
                comparison per id and row: ask for it with few ids).
            progress: show a progress bar over the chunks.
        """
        flat, lead, n = self._check_hidden(hidden, top_k, reference)
        ids = self._check_ids(token_ids, "token ids")
        targets = self._check_ids(targets, "targets", n)
        g = flat.shape[0]
        layer_of = self._check_layers(layers, g)
        out = _Outputs(g, n, top_k, entropy, reference is not None, ids, probs, self.model.vocab_size, targets, ranks)
        step = self.rows_per_chunk(with_reference=reference is not None)
        starts = range(0, n, step)
        bar = tqdm(total=len(starts) * g, unit="chunk", desc="decode", disable=not progress)
        try:
            # Positions outermost, so a reference distribution is computed once per chunk.
            for start in starts:
                stop = min(n, start + step)
                ref = None if reference is None else _Reference(self._reference_log_probs(reference[start:stop]))
                for index in range(g):
                    out.fill(index, start, stop, self.log_probs(flat[index, start:stop], layer_of[index]), ref)
                    bar.update(1)
                del ref
        finally:
            bar.close()
        result = out.result(lead, n)
        result.n_chunks = len(starts) * g
        return result

    def _check_layers(self, layers: Sequence[int | None] | None, g: int) -> list[int | None]:
        if layers is None:
            if getattr(self.lens, "embedding", False):  # None would mean "the embeddings" to this lens
                raise InterlayerError("this lens has a translator for the embedding output, so decode needs the layer "
                                      "of each slice: pass layers= (None for the embedding output, resid_pre.0)")
            return [None] * g
        layer_of: list[int | None] = [None if layer is None else self.model.check_layer(int(layer)) for layer in layers]
        if len(layer_of) != g:
            raise InterlayerError(f"layers has {len(layer_of)} entries but hidden holds {g} slices of [n, d]")
        return layer_of

    def _reference_log_probs(self, reference: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(self.model.unembed_resid(reference.to(self.model.device)).float(), -1)

    def _check_hidden(self, hidden: torch.Tensor, top_k: int,
                      reference: torch.Tensor | None = None) -> tuple[torch.Tensor, list[int], int]:
        if hidden.dim() < 2:
            raise InterlayerError(f"hidden must be [..., n, d_model], got shape {tuple(hidden.shape)}")
        if hidden.shape[-1] != self.model.d_model:
            raise InterlayerError(f"hidden has width {hidden.shape[-1]}, but {self.model.name} has "
                                  f"d_model={self.model.d_model}")
        vocab = self.model.vocab_size
        if not 0 <= top_k <= vocab:
            raise InterlayerError(f"top_k={top_k} is out of range; valid values are 0..{vocab}")
        *lead, n, _ = hidden.shape
        if reference is not None and tuple(reference.shape) != (n, hidden.shape[-1]):
            raise InterlayerError(f"reference must have shape {(n, hidden.shape[-1])}, got {tuple(reference.shape)}")
        return hidden.reshape(-1, n, hidden.shape[-1]), lead, n

    def _check_ids(self, ids: Any, what: str, count: int | None = None) -> torch.Tensor | None:
        if ids is None:
            return None
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(-1)
        if count is not None and ids.numel() != count:
            raise InterlayerError(f"{what} must hold one id per position ({count}), got {ids.numel()}")
        vocab = self.model.vocab_size
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise InterlayerError(f"{what} must lie in 0..{vocab - 1}, got min {int(ids.min())}, max {int(ids.max())}")
        return ids.to(self.model.device)


def _target_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``-log softmax(z)[t]`` per row as ``logsumexp(z) - z[t]``, the one next-token loss: no
    log-softmax tensor, and in float32 over Gemma's 262,144 tokens within 1e-7 of float64
    (``-log_softmax`` is 3e-5 low)."""
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets[:, None])[:, 0]
