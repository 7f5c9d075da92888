"""Confidence intervals: the one place every result gets its uncertainty from.

* :func:`proportion_interval`: the Wilson score interval of a binomial proportion
  (``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``; Wilson 1927). Used for
  accuracies and rates counted over items (QA exact match, probe accuracy, saturation).
* :func:`mean_interval`: a seeded percentile bootstrap of a mean (``scipy.stats.bootstrap``;
  Efron & Tibshirani 1993), column by column. A percentile interval of a mean lies inside
  the range of the data, so the interval of a mean probability stays in [0, 1]; ``bounds``
  clips it to the quantity's range as well.
* :func:`bootstrap_interval`: the same for any statistic of paired samples (an AUROC).

Unlike a normal or t interval, none of these leaves the range of the quantity: the
t-intervals these replace gave ``p_target_low = -1.2e-34`` and a probe ``ci_high = 1.008``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import InterlayerError

LEVEL = 0.95
"""The confidence level of every interval the toolkit reports."""

N_RESAMPLES = 2000
"""Bootstrap resamples: the percentile bounds of a 95% interval move by well under 1%
of its width between seeds at this count."""

PROBABILITY = (0.0, 1.0)
"""The ``bounds`` of a probability, an accuracy or a rate."""

__all__ = ["LEVEL", "N_RESAMPLES", "PROBABILITY", "bootstrap_interval", "mean_interval", "proportion_interval"]


def _rng_keyword() -> str:
    """``rng`` from scipy 1.15 on, ``random_state`` before (the declared floor is 1.10)."""
    import inspect

    from scipy.stats import bootstrap

    return "rng" if "rng" in inspect.signature(bootstrap).parameters else "random_state"


_RNG = ""


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise InterlayerError(f"confidence level must be between 0 and 1 (exclusive), got {level}")


def proportion_interval(successes: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``successes / n``.

    With p = successes / n and z the normal quantile at 1 - (1 - level) / 2::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

    computed by ``scipy.stats.binomtest(successes, n).proportion_ci(level, "wilson")``.
    It stays inside [0, 1] and does not collapse to a point at 0 or n successes.
    ``n == 0`` gives ``(nan, nan)``.
    """
    _check_level(level)
    if isinstance(successes, bool) or isinstance(n, bool) or int(successes) != successes or int(n) != n:
        raise InterlayerError(f"successes and n must be whole numbers, got successes={successes!r}, n={n!r}")
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= n:
        raise InterlayerError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=level, method="wilson")
    return (min(1.0, max(0.0, float(ci.low))), min(1.0, max(0.0, float(ci.high))))


def mean_interval(values: Any, *, bounds: tuple[float, float] | None = None, level: float = LEVEL, seed: int = 0,
                  n_resamples: int = N_RESAMPLES) -> tuple[np.ndarray, np.ndarray]:
    """Percentile-bootstrap interval of the mean of ``values`` along axis 0, seeded.

    ``values`` is ``[n]`` or ``[n, k]`` (e.g. words x layers): the result is ``(low, high)``,
    each of shape ``[]`` or ``[k]``. NaN rows of a column are left out of that column.
    Fewer than two values give the mean as both bounds (no spread to resample);
    a column of one repeated value gives that value. ``bounds`` (``PROBABILITY`` for a
    probability) clips the interval to the quantity's range.
    """
    _check_level(level)
    data = np.asarray(values, dtype=np.float64)
    if data.ndim not in (1, 2):
        raise InterlayerError(f"values must be [n] or [n, k], got shape {data.shape}")
    if n_resamples < 1:
        raise InterlayerError(f"n_resamples must be at least 1, got {n_resamples}")
    columns = data[:, None] if data.ndim == 1 else data
    low = np.full(columns.shape[1], np.nan)
    high = np.full(columns.shape[1], np.nan)
    from scipy.stats import bootstrap

    global _RNG
    _RNG = _RNG or _rng_keyword()
    for j in range(columns.shape[1]):
        column = columns[:, j][~np.isnan(columns[:, j])]
        if column.size == 0:
            continue
        if column.size < 2 or np.all(column == column[0]):
            low[j] = high[j] = column.mean()
            continue
        res = bootstrap((column,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                        vectorized=True, **{_RNG: np.random.default_rng(seed)})
        low[j], high[j] = res.confidence_interval.low, res.confidence_interval.high
    if bounds is not None:
        low, high = np.clip(low, *bounds), np.clip(high, *bounds)
    return (low[0], high[0]) if data.ndim == 1 else (low, high)


def bootstrap_interval(statistic: Callable[..., float], samples: Sequence[Any], *, bounds: tuple[float, float] | None = None,
                       level: float = LEVEL, seed: int = 0, n_resamples: int = N_RESAMPLES) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic(*samples)``, the samples resampled
    together (paired: the same rows of each), seeded; e.g. an AUROC of
    ``(labels, scores)``. Resamples where the statistic is undefined (NaN) are dropped;
    if fewer than half remain, the interval is ``(nan, nan)``."""
    _check_level(level)
    arrays = [np.asarray(s) for s in samples]
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise InterlayerError(f"paired samples must have equal lengths, got {[len(a) for a in arrays]}")
    if n < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        index = rng.integers(0, n, n)
        values.append(float(statistic(*(a[index] for a in arrays))))
    kept = np.asarray([v for v in values if not math.isnan(v)])
    if kept.size < n_resamples / 2:
        return (math.nan, math.nan)
    alpha = (1 - level) / 2
    low, high = float(np.quantile(kept, alpha)), float(np.quantile(kept, 1 - alpha))
    if bounds is not None:
        low, high = min(max(low, bounds[0]), bounds[1]), min(max(high, bounds[0]), bounds[1])
    return (low, high)
