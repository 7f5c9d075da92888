"""interlayer.intervals: Wilson and bootstrap intervals stay in range and agree with direct computations."""

import math

import numpy as np
import pytest

from interlayer.errors import InterlayerError
from interlayer.intervals import PROBABILITY, bootstrap_interval, mean_interval, proportion_interval


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(0, 1), (0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 1000), (1000, 1000), (3, 7)])
def test_wilson_equals_the_formula_and_stays_in_the_unit_interval(k, n):
    low, high = proportion_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    expected = wilson_by_hand(k, n)
    assert low == pytest.approx(max(0.0, expected[0]), abs=1e-12) and high == pytest.approx(min(1.0, expected[1]), abs=1e-12)
    if 0 < k < n:
        assert low > 0 and high < 1


def test_wilson_edge_cases_and_errors():
    assert all(math.isnan(v) for v in proportion_interval(0, 0))
    wide, narrow = proportion_interval(5, 10, level=0.99), proportion_interval(5, 10, level=0.5)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]
    with pytest.raises(InterlayerError, match="0 <= successes <= n"):
        proportion_interval(11, 10)
    with pytest.raises(InterlayerError, match="confidence level"):
        proportion_interval(1, 10, level=1.0)
    with pytest.raises(InterlayerError, match="whole numbers"):
        proportion_interval(1.5, 10)


@pytest.mark.parametrize("centre", [1e-34, 1e-6, 0.5, 1 - 1e-9, 1.0])
def test_bootstrap_of_probabilities_near_0_and_1_stays_in_range(centre):
    rng = np.random.default_rng(0)
    values = np.clip(centre + rng.normal(0, min(centre, 1 - centre, 0.1) / 3, (25, 4)), 0, 1)
    values[0, 0] = 0.0 if centre < 0.5 else 1.0  # an outlier on the boundary
    low, high = mean_interval(values, bounds=PROBABILITY)
    assert low.shape == high.shape == (4,)
    assert np.all(low >= 0) and np.all(high <= 1) and np.all(low <= values.mean(0) + 1e-15)
    assert np.all(values.mean(0) <= high + 1e-15)


def test_bootstrap_of_tiny_probabilities_is_never_negative():
    # The t-interval this replaces gave p_target_low = -1.2e-34 for such a column.
    values = np.array([1e-33] + [1e-36] * 19)
    low, high = mean_interval(values, bounds=PROBABILITY)
    assert 0 <= low <= values.mean() <= high


def test_bootstrap_agrees_with_the_normal_interval_on_a_large_sample():
    rng = np.random.default_rng(3)
    values = rng.random(2000)
    low, high = mean_interval(values, seed=1)
    sem = values.std(ddof=1) / math.sqrt(values.size)
    assert low == pytest.approx(values.mean() - 1.96 * sem, abs=0.2 * sem)
    assert high == pytest.approx(values.mean() + 1.96 * sem, abs=0.2 * sem)


def test_bootstrap_is_seeded_and_handles_degenerate_columns():
    rng = np.random.default_rng(4)
    values = rng.random((30, 2))
    a, b = mean_interval(values, seed=7), mean_interval(values, seed=7)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert mean_interval([0.25]) == (0.25, 0.25)
    assert mean_interval([0.3] * 5) == (0.3, 0.3)
    low, high = mean_interval(np.array([[np.nan, 0.5], [np.nan, 0.5]]))
    assert np.isnan(low[0]) and low[1] == high[1] == 0.5
    with pytest.raises(InterlayerError, match="shape"):
        mean_interval(np.zeros((2, 2, 2)))


def test_paired_bootstrap_of_a_statistic_agrees_with_direct_resampling():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 200)
    scores = labels + rng.normal(0, 1, 200)

    def agreement(y, s):
        return float(np.mean((s > 0.5) == (y == 1)))

    low, high = bootstrap_interval(agreement, (labels, scores), bounds=PROBABILITY, seed=2, n_resamples=500)
    direct_rng = np.random.default_rng(2)
    direct = [agreement(labels[i], scores[i]) for i in (direct_rng.integers(0, 200, 200) for _ in range(500))]
    assert low == pytest.approx(np.quantile(direct, 0.025)) and high == pytest.approx(np.quantile(direct, 0.975))
    assert 0 <= low <= agreement(labels, scores) <= high <= 1
    assert all(math.isnan(v) for v in bootstrap_interval(agreement, ([1], [0.2])))
    with pytest.raises(InterlayerError, match="equal lengths"):
        bootstrap_interval(agreement, ([1, 0], [0.2]))
