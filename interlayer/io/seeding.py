"""Seeded row orders: the one permutation every shuffled reader uses, so a given seed
and epoch name the same order everywhere (store batches, SAE sources, lens training).

Two schemes:

* ``"randperm"`` (:func:`epoch_permutation`): ``torch.randperm``, materialised, 8 bytes a
  row (a billion rows: 8 GB per epoch). Kept for the small permutations (a chunk's rows,
  the ranks' batches) and for runs that recorded it.
* ``"feistel"`` (:class:`LazyPermutation`): a seeded bijection of ``range(n)`` evaluated
  only at the positions asked for, so an epoch's order costs O(batch) memory whatever
  ``n``. The shuffled reads of a cache (:meth:`interlayer.ActivationStore.batches`) use it.

The Feistel permutation: write a position as ``k`` bits, ``k = max(2, ceil(log2 n))``, split
into a high half ``L`` (``ceil(k/2)`` bits) and a low half ``R`` (``floor(k/2)`` bits); each of
:data:`ROUNDS` rounds adds a keyed hash of one half to the other, modulo its size
(alternating halves), which is invertible, so the whole is a bijection of ``[0, 2^k)``
(Luby & Rackoff 1988; the unbalanced, alternating form of Black & Rogaway 2002). A value
``>= n`` is encrypted again until it falls in ``[0, n)`` ("cycle walking", Black & Rogaway
2002, section 3), which keeps it a bijection of ``range(n)``; as ``2^k < 2n`` a position
takes fewer than two encryptions on average. The round keys come from
:func:`epoch_seed` through splitmix64, so the order is a pure function of
``(n, seed, epoch, *more)``, the same on every platform.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InterlayerError

_EPOCH_STRIDE = 1_000_003
"""A prime: seeds of different (seed, epoch) pairs never collide for epochs below it."""
SCHEMES = ("feistel", "randperm")
"""The shuffle schemes: the lazy Feistel bijection (new runs) and the materialised randperm."""
FEISTEL = "feistel-v1"
"""The name a run records for the Feistel order (a change to it gets a new version)."""
ROUNDS = 8
_MASK64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int, *more: int) -> int:
    """The generator seed of ``epoch`` (and optionally sub-parts, e.g. a chunk) of a run seeded ``seed``."""
    value = seed * _EPOCH_STRIDE + epoch
    for part in more:
        value = value * _EPOCH_STRIDE + part
    return value


def epoch_permutation(n: int, seed: int, epoch: int, *more: int) -> torch.Tensor:
    """A permutation of ``range(n)``, a pure function of ``(n, seed, epoch, *more)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, *more)))


def _splitmix64(state: int) -> tuple[int, int]:
    """One step of splitmix64 (Steele, Lea & Flood 2014): ``(next state, output)``."""
    state = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return state, z ^ (z >> 31)


def _mix(x: np.ndarray, key: np.uint64) -> np.ndarray:
    """A keyed 64-bit hash of each element (the splitmix64 finaliser of ``x ^ key``; uint64
    arithmetic wraps modulo 2^64 by definition)."""
    z = x ^ key
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class LazyPermutation:
    """The ``"feistel"`` order of ``range(n)`` for ``(seed, epoch, *more)``: a bijection
    evaluated at the positions asked for (see the module docstring), sliced like a tensor:
    ``order[start:stop]`` is a ``torch.int64`` tensor of ``stop - start`` row indices.

    Args:
        n: the number of rows (at least 1, below 2^62).
        seed, epoch, more: as :func:`epoch_permutation`.
    """

    def __init__(self, n: int, seed: int, epoch: int, *more: int) -> None:
        if not 1 <= n < 1 << 62:
            raise InterlayerError(f"a lazy permutation needs 1 <= n < 2**62 rows, got {n}")
        self.n = int(n)
        bits = max(2, (self.n - 1).bit_length())
        self._low_bits = bits // 2
        self._high_bits = bits - self._low_bits
        state, keys = epoch_seed(seed, epoch, *more) & _MASK64, []
        for _ in range(ROUNDS):
            state, key = _splitmix64(state)
            keys.append(np.uint64(key))
        self._keys = keys

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, positions: slice) -> torch.Tensor:
        if not isinstance(positions, slice):
            raise TypeError("a LazyPermutation is read in slices: order[start:stop]")
        start, stop, step = positions.indices(self.n)
        return self.at(np.arange(start, stop, step, dtype=np.uint64))

    def at(self, positions: np.ndarray) -> torch.Tensor:
        """The rows at ``positions`` (a uint64 array of values in ``[0, n)``) as an int64 tensor."""
        out = self._encrypt(positions)
        outside = np.flatnonzero(out >= np.uint64(self.n))
        while outside.size:  # cycle walking: each value outside [0, n) is encrypted again
            out[outside] = self._encrypt(out[outside])
            outside = outside[out[outside] >= np.uint64(self.n)]
        return torch.from_numpy(out.astype(np.int64))

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        low_size, high_size = np.uint64(1 << self._low_bits), np.uint64(1 << self._high_bits)
        high, low = x >> np.uint64(self._low_bits), x & (low_size - np.uint64(1))
        for number, key in enumerate(self._keys):
            if number % 2 == 0:
                high = (high + _mix(low, key) % high_size) % high_size
            else:
                low = (low + _mix(high, key) % low_size) % low_size
        return (high << np.uint64(self._low_bits)) | low


def epoch_order(n: int, seed: int, epoch: int, *more: int, scheme: str = "feistel") -> torch.Tensor | LazyPermutation:
    """The order of ``range(n)`` for an epoch under ``scheme`` (one of :data:`SCHEMES`):
    a :class:`LazyPermutation` (``"feistel"``) or the materialised :func:`epoch_permutation`
    (``"randperm"``); both are read in slices, ``order[start:stop]``."""
    if scheme == "feistel":
        return LazyPermutation(n, seed, epoch, *more)
    if scheme == "randperm":
        return epoch_permutation(n, seed, epoch, *more)
    raise InterlayerError(f"unknown shuffle scheme {scheme!r}; valid choices: {', '.join(map(repr, SCHEMES))}")
