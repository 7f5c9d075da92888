"""SAE evaluation memory is flat in the number of tokens, and its metrics equal the
previous all-tokens computation: exactly while every token is kept, means to float
rounding and medians within the sketch's bound beyond."""

import tracemalloc

import numpy as np
import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.evaluation import evaluate_activations
from interlayer.saes.reconstruction import QUANTILE_ACCURACY, TOKEN_COLUMNS, Accumulator, QuantileSketch, Reservoir


def _sae(d_in=8, d_sae=24, k=3, seed=0):
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, arch="topk", k=k, normalization="standardize"), seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=torch.Generator().manual_seed(seed)) * 0.1)
    return sae.eval()


def _batches(n, d_in=8, batch=4096, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n, batch):
        yield torch.randn(min(batch, n - start), d_in, generator=gen) * 2 + 1


def _old_metrics(sae, n):
    """The previous computation: every token's diagnostics concatenated, then np.median / np.mean."""
    acc = Accumulator(sae, per_token_rows=None)
    columns = {name: [] for name in TOKEN_COLUMNS}
    for x in _batches(n):
        with torch.no_grad():
            out = sae(x)
            for name, values in acc._token_columns(out, out.f > 0).items():
                columns[name].append(values)
    t = {name: np.concatenate(v) for name, v in columns.items()}
    ratio = t["norm_f"] / np.maximum(t["norm_x"], 1e-30)
    ratio_c = t["norm_f"] / np.maximum(t["norm_x_centred"], 1e-30)
    return t, {"eps_lbo_median": np.median(t["eps_lbo"]), "eps_lbo_mean": np.mean(t["eps_lbo"]),
               "eps_lbo_authors_median": np.median(t["eps_lbo_authors"]),
               "eps_lbo_centred_median": np.median(t["eps_lbo_centred"]),
               "f_norm_ratio_median": np.median(ratio), "f_norm_ratio_mean": np.mean(ratio),
               "f_norm_ratio_centred_median": np.median(ratio_c)}


def _peak(sae, n, per_token_rows):
    acc = Accumulator(sae, per_token_rows)
    tracemalloc.start()
    try:
        for x in _batches(n):
            acc.add(x)
        acc.result()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_accumulator_memory_is_flat_from_10k_to_1m_tokens():
    sae = _sae()
    small, large = _peak(sae, 10_000, 8192), _peak(sae, 1_000_000, 8192)
    assert large / small < 1.5, (small, large)
    # keeping every token (the previous behaviour, now opt-in) grows with them
    everything_small, everything_large = _peak(sae, 10_000, None), _peak(sae, 200_000, None)
    assert everything_large / everything_small > 5


@pytest.mark.parametrize("per_token_rows", [None, 65_536, 3000])
def test_metrics_equal_every_token_computation(per_token_rows):
    sae = _sae()
    n = 5000
    tokens, old = _old_metrics(sae, n)
    ev = evaluate_activations(sae, torch.cat(list(_batches(n))), per_token_rows=per_token_rows)
    assert ev.metrics["tokens"] == n
    if per_token_rows is None or per_token_rows >= n:  # every token kept: the same frame, the same numbers
        assert len(ev.per_token) == n
        for name in TOKEN_COLUMNS:
            np.testing.assert_array_equal(ev.per_token[name].to_numpy(), tokens[name])
        for key, value in old.items():
            assert ev.metrics[key] == float(value), key
    else:
        assert len(ev.per_token) == per_token_rows
        for key, value in old.items():
            if key.endswith("_mean"):
                assert ev.metrics[key] == pytest.approx(float(value), rel=1e-12), key
            else:
                assert abs(ev.metrics[key] - value) <= QUANTILE_ACCURACY * value * (1 + 1e-9), key
        # the sample is made of real rows (eps_lbo identifies a row), seeded: a rerun keeps the same ones
        assert set(ev.per_token.eps_lbo) <= set(tokens["eps_lbo"])
        again = evaluate_activations(sae, torch.cat(list(_batches(n))), per_token_rows=per_token_rows)
        assert again.per_token.equals(ev.per_token)
    for fig in (ev.zf_plot(), ev.eps_histogram()):
        assert len(fig.data) >= 1


def test_sketch_median_within_its_bound():
    rng = np.random.default_rng(0)
    for values in (rng.lognormal(0, 3, 10_001), rng.lognormal(-20, 1, 4000), np.r_[np.zeros(30), rng.random(31)]):
        sketch = QuantileSketch()
        for part in np.array_split(values, 7):
            sketch.add(part)
        exact = np.median(values)
        assert abs(sketch.median() - exact) <= QUANTILE_ACCURACY * exact * (1 + 1e-9)
    sketch = QuantileSketch()
    sketch.add(np.array([1.0, np.nan]))
    assert np.isnan(sketch.median())


def test_reservoir_is_uniform_and_seeded():
    counts = np.zeros(1000)
    for seed in range(400):
        sample = Reservoir(100, seed)
        for start in range(0, 1000, 64):
            sample.add({"row": np.arange(start, min(start + 64, 1000))})
        rows = sample.rows()["row"]
        assert len(rows) == 100 and len(set(rows)) == 100
        counts[rows] += 1
    # each row is kept with probability 100/1000: 40 times in 400 samples on average
    assert abs(counts[:500].mean() - 40) < 3 and abs(counts[500:].mean() - 40) < 3
    assert counts.min() > 15 and counts.max() < 70
    with pytest.raises(InterlayerError, match="per_token_rows"):
        Reservoir(0)
