"""The lazy Feistel order of a cache's rows: an exact bijection of range(n), a pure
function of (n, seed, epoch), spread evenly, and O(batch) in memory whatever n."""

import tracemalloc

import numpy as np
import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.io.seeding import LazyPermutation, epoch_order, epoch_permutation


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 100, 1000, 4097, 65_537])
def test_it_is_a_bijection_of_range_n(n):
    for seed, epoch in [(0, 0), (3, 1), (12345, 7)]:
        order = LazyPermutation(n, seed, epoch)[0:n]
        assert order.dtype == torch.int64 and order.shape == (n,)
        assert torch.equal(order.sort().values, torch.arange(n)), (n, seed, epoch)


def test_slices_agree_with_the_whole_and_are_deterministic():
    n = 10_007
    whole = LazyPermutation(n, 5, 2)[0:n]
    pieces = torch.cat([LazyPermutation(n, 5, 2)[start:start + 333] for start in range(0, n, 333)])
    assert torch.equal(whole, pieces)
    assert torch.equal(LazyPermutation(n, 5, 2)[100:200], whole[100:200])
    assert len(LazyPermutation(n, 5, 2)) == n and LazyPermutation(n, 5, 2)[n - 3:n + 10].shape == (3,)


def test_epochs_seeds_and_sizes_give_other_orders():
    n = 5000
    base = LazyPermutation(n, 0, 0)[0:n]
    for other in (LazyPermutation(n, 0, 1), LazyPermutation(n, 1, 0), LazyPermutation(n, 0, 0, 3)):
        order = other[0:n]
        assert (order == base).float().mean() < 0.01  # about 1/n agree by chance
    assert not torch.equal(base[:100], torch.arange(100))


def test_rows_are_spread_evenly():
    """Loose chi-square checks: where the first tenth of an epoch's positions land, and which
    position each of a few rows takes across 2,000 seeds."""
    n, buckets = 100_000, 50
    first = LazyPermutation(n, 7, 0)[0:n // 10]
    counts = torch.bincount(first * buckets // n, minlength=buckets).double()
    expected = n / 10 / buckets
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 2 * buckets  # 49 degrees of freedom: 100 is far in the tail
    small = torch.stack([LazyPermutation(10, seed, 0)[0:10] for seed in range(2000)])
    for row in range(10):
        at = torch.bincount((small == row).int().argmax(1), minlength=10).double()
        assert float(((at - 200) ** 2 / 200).sum()) < 40, row  # 9 degrees of freedom
    perms = {tuple(LazyPermutation(3, seed, 0)[0:3].tolist()) for seed in range(300)}
    assert len(perms) == 6  # every order of three rows occurs


def peak_bytes(n, batch=4096):
    order = LazyPermutation(n, 1, 0)
    start = max(0, n - 3 * batch)
    tracemalloc.start()
    rows = order[start:start + batch]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert rows.shape == (min(batch, n - start),) and int(rows.max()) < n
    return peak


def test_memory_for_one_batch_is_flat_in_n():
    """numpy's allocations are traced: one batch costs the same at 10^4 and 10^9 rows (a
    materialised permutation of 10^9 rows would be 8 GB)."""
    small, large = peak_bytes(10_000), peak_bytes(1_000_000_000)
    assert large < 1.5 * small + 65_536 and large < 2 * 2**20, (small, large)
    assert peak_bytes(1 << 40) < 2 * 2**20


def test_epoch_order_names_its_schemes():
    assert torch.equal(epoch_order(50, 2, 1, scheme="randperm"), epoch_permutation(50, 2, 1))
    assert torch.equal(epoch_order(50, 2, 1)[0:50], LazyPermutation(50, 2, 1)[0:50])
    with pytest.raises(InterlayerError, match="unknown shuffle scheme 'sorted'; valid choices: 'feistel', 'randperm'"):
        epoch_order(50, 2, 1, scheme="sorted")
    with pytest.raises(InterlayerError, match="1 <= n"):
        LazyPermutation(0, 0, 0)
    np.testing.assert_array_equal(LazyPermutation(1, 9, 9)[0:1].numpy(), [0])
