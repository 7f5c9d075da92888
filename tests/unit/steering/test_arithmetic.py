"""Arithmetic on SteeringVector (steering/arithmetic.py) against direct tensor arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.steering import SteeringVector

D = 16


def _vector(layers, seed: int, **kw) -> SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return SteeringVector({l: torch.randn(D, generator=g) for l in layers}, model=kw.pop("model", "m"), **kw)


def test_sum_and_difference_are_per_layer_tensor_arithmetic_over_the_union_of_layers():
    a, b = _vector([1, 2, 3], 0, dataset="happy", n_pairs=4), _vector([2, 3, 5], 1, dataset="calm", n_pairs=6)
    total, diff = a + b, a - b
    assert total.layers == diff.layers == [1, 2, 3, 5]
    for layer in (2, 3):
        assert torch.equal(total[layer], a[layer] + b[layer]) and torch.equal(diff[layer], a[layer] - b[layer])
    assert torch.equal(total[1], a[1]) and torch.equal(diff[1], a[1])  # only a has layer 1
    assert torch.equal(total[5], b[5]) and torch.equal(diff[5], -b[5])  # only b has layer 5
    assert total.extra["arithmetic"] == "(happy) + (calm)" and diff.dataset == "(happy) - (calm)"
    assert total.n_pairs == 10 and total.model == "m" and total.normalized is False
    assert sum([a, b]).layers == total.layers and torch.equal(sum([a, b])[2], total[2])
    # the operands are untouched
    assert a.layers == [1, 2, 3] and torch.equal((a + b)[1], a[1]) and (a + b)[1] is not b.directions.get(1)


@pytest.mark.parametrize("factor", [2, -0.5, 3.25, np.float32(1.5), np.int64(3), torch.tensor(0.75)])
def test_scaling_by_a_number_on_either_side(factor):
    a = _vector([1, 4], 2)
    k = float(factor)
    for scaled in (a * factor, factor * a):
        assert scaled.layers == [1, 4] and all(torch.equal(scaled[l], a[l] * k) for l in (1, 4))
    assert all(torch.equal((a / factor)[l], a[l] / k) for l in (1, 4))
    assert all(torch.equal((-a)[l], -a[l]) for l in (1, 4))


def test_the_normalized_mark_follows_the_norms():
    unit = SteeringVector({1: torch.ones(D) / D ** 0.5}, normalized=True)
    assert (unit * 1).normalized is True and (unit * 2).normalized is False and (-unit).normalized is True
    assert ((unit * 2) / 2).normalized is True


def test_mismatched_vectors_and_operands_are_clear_errors():
    a = _vector([1], 0)
    with pytest.raises(InterlayerError, match=r"different widths \(d_model=16 \+ d_model=8\)"):
        a + SteeringVector({1: torch.randn(8)}, model="m")
    with pytest.raises(InterlayerError, match=r"different models \('m' - 'other'\)"):
        a - _vector([1], 1, model="other")
    with pytest.raises(InterlayerError, match=r"different weights"):
        _vector([1], 0, weights_sha256="aa" * 32) + _vector([1], 1, weights_sha256="bb" * 32)
    with pytest.raises(InterlayerError, match=r"different site kinds \('resid_post' \+ 'mlp_out'\)"):
        a + _vector([1], 1, site="mlp_out")
    with pytest.raises(InterlayerError, match="only another SteeringVector can be added"):
        a + torch.ones(D)
    with pytest.raises(InterlayerError, match="scaled .* by a real number only"):
        a * a
    with pytest.raises(InterlayerError, match="scaled .* by a real number only"):
        a * True
    with pytest.raises(InterlayerError, match="divide a steering vector by 0.0; give a finite, non-zero number"):
        a / 0
    with pytest.raises(InterlayerError, match="multiply a steering vector by inf"):
        a * float("inf")
    with pytest.raises(InterlayerError, match=r"divide the vector by a number instead \(v / k\)"):
        2 / a


def test_a_foreign_gguf_vector_names_only_an_architecture_and_goes_with_any_model_of_its_width():
    ours = _vector([1, 2], 0, model="smollm2-135m-instruct")
    theirs = SteeringVector({2: torch.randn(D)}, method="gguf", model="llama", extra={"model_hint": "llama"})
    mixed = ours + theirs
    assert mixed.model == "smollm2-135m-instruct" and mixed.method == "combined"
    assert torch.equal(mixed[2], ours[2] + theirs[2])
