"""What one :meth:`~interlayer.decoding.LayerDecoder.decode` call returns, and the
buffers that fill it chunk by chunk (top-k, entropy, KL to a reference, token and target
log-probabilities, ranks, full distributions)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch


@dataclass
class DecodeResult:
    """What :meth:`LayerDecoder.decode` computed; fields not asked for are ``None``.

    Shapes use ``*lead`` for the leading dimensions of the decoded hidden states.
    """

    top_ids: torch.Tensor | None = None
    """``[*lead, k]`` token ids, most probable first."""
    top_probs: torch.Tensor | None = None
    """``[*lead, k]`` their probabilities."""
    entropy: torch.Tensor | None = None
    """``[*lead]`` entropy in nats, ``-sum p log p``."""
    kl_to_final: torch.Tensor | None = None
    """``[*lead]`` KL(reference || decoded) in nats, the reference being the final layer
    (named as in :class:`~interlayer.lens.LogitLensResult`)."""
    token_logprobs: torch.Tensor | None = None
    """``[*lead, n_ids]`` log-probability of each requested id, normalised over the whole vocabulary."""
    target_logprobs: torch.Tensor | None = None
    """``[*lead, n]`` log-probability of each position's own target id (e.g. the next token)."""
    token_ranks: torch.Tensor | None = None
    """``[*lead, n_ids]`` rank of each requested id (0 = most probable)."""
    set_logprob: torch.Tensor | None = None
    """``[*lead]`` log of the total probability of the requested id set."""
    probs: torch.Tensor | None = None
    """``[*lead, vocab]`` full distributions (only when asked for; on the CPU)."""
    n_chunks: int = field(default=0)
    """How many chunks the work was split into."""

    @property
    def topk_ids(self) -> torch.Tensor | None:
        """Deprecated name of :attr:`top_ids` (one release)."""
        _renamed("topk_ids", "top_ids")
        return self.top_ids

    @property
    def topk_probs(self) -> torch.Tensor | None:
        """Deprecated name of :attr:`top_probs` (one release)."""
        _renamed("topk_probs", "top_probs")
        return self.top_probs

    @property
    def kl_to_reference(self) -> torch.Tensor | None:
        """Deprecated name of :attr:`kl_to_final` (one release)."""
        _renamed("kl_to_reference", "kl_to_final")
        return self.kl_to_final


def _renamed(old: str, new: str) -> None:
    warnings.warn(f"DecodeResult.{old} is renamed {new}; the old name goes in the next release",
                  DeprecationWarning, stacklevel=3)


class _Reference:
    """A chunk's reference distributions, kept as probabilities plus their
    negative entropy so that KL(ref || q) = sum ref·log ref - sum ref·log q
    needs no vocabulary-sized temporary per layer."""

    def __init__(self, logp: torch.Tensor) -> None:
        self.p = logp.exp()
        self.neg_entropy = _rowdot(self.p, logp)


def _target_logprobs(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its own target id."""
    return logp.gather(-1, targets[:, None])[:, 0]


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product (3x faster than einsum's batched matmul on CPU)."""
    return torch.linalg.vecdot(a, b)


class _Outputs:
    """Preallocated outputs of one decode call, filled chunk by chunk."""

    def __init__(self, g: int, n: int, top_k: int, entropy: bool, kl: bool, ids: torch.Tensor | None, probs: bool,
                 vocab: int, targets: torch.Tensor | None = None, ranks: bool = False):
        self.top_k, self.ids, self.targets = top_k, ids, targets
        self.target_logprobs = torch.zeros(g, n) if targets is not None else None
        self.top_ids = torch.zeros(g, n, top_k, dtype=torch.long) if top_k else None
        self.top_probs = torch.zeros(g, n, top_k) if top_k else None
        self.entropy = torch.zeros(g, n) if entropy else None
        self.kl = torch.zeros(g, n) if kl else None
        self.token_logprobs = torch.zeros(g, n, len(ids)) if ids is not None else None
        self.token_ranks = torch.zeros(g, n, len(ids), dtype=torch.long) if ids is not None and ranks else None
        self.set_logprob = torch.zeros(g, n) if ids is not None else None
        self.probs = torch.zeros(g, n, vocab) if probs else None

    def fill(self, index: int, start: int, stop: int, logp: torch.Tensor, ref: _Reference | None) -> None:
        p = None
        if self.top_k:
            values, indices = torch.topk(logp, self.top_k, dim=-1)
            self.top_ids[index, start:stop] = indices.cpu()
            self.top_probs[index, start:stop] = values.exp().cpu()
        if self.entropy is not None:
            p = logp.exp()
            self.entropy[index, start:stop] = -_rowdot(p, logp).cpu()
        if self.kl is not None:
            self.kl[index, start:stop] = (ref.neg_entropy - _rowdot(ref.p, logp)).cpu()
        if self.ids is not None:
            picked = logp[:, self.ids]
            self.token_logprobs[index, start:stop] = picked.cpu()
            for j in range(picked.shape[1] if self.token_ranks is not None else 0):  # never [rows, ids, vocab]
                self.token_ranks[index, start:stop, j] = (logp > picked[:, j : j + 1]).sum(-1).cpu()
            self.set_logprob[index, start:stop] = torch.logsumexp(picked, dim=-1).cpu()
        if self.targets is not None:
            self.target_logprobs[index, start:stop] = _target_logprobs(logp, self.targets[start:stop]).cpu()
        if self.probs is not None:
            self.probs[index, start:stop] = (p if p is not None else logp.exp()).cpu()

    def result(self, lead: list[int], n: int) -> DecodeResult:
        def shape(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(*lead, n, *t.shape[2:])

        return DecodeResult(
            top_ids=shape(self.top_ids),
            top_probs=shape(self.top_probs),
            entropy=shape(self.entropy),
            kl_to_final=shape(self.kl),
            token_logprobs=shape(self.token_logprobs),
            token_ranks=shape(self.token_ranks),
            target_logprobs=shape(self.target_logprobs),
            set_logprob=shape(self.set_logprob),
            probs=shape(self.probs),
        )
