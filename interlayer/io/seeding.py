"""Seeded row orders: the one permutation every shuffled reader uses, so a given seed
and epoch name the same order everywhere (store batches, SAE sources, lens training)."""

from __future__ import annotations

import torch

_EPOCH_STRIDE = 1_000_003
"""A prime: seeds of different (seed, epoch) pairs never collide for epochs below it."""


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """The generator seed of ``epoch`` (and optionally sub-parts, e.g. a chunk) of a run seeded ``seed``."""
    value = seed * _EPOCH_STRIDE + epoch
    for part in more:
        value = value * _EPOCH_STRIDE + part
    return value


def epoch_permutation(n: int, seed: int, epoch: int, *more: int) -> torch.Tensor:
    """A permutation of ``range(n)``, a pure function of ``(n, seed, epoch, *more)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, *more)))
