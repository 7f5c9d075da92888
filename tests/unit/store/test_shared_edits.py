"""collect_variants(edits=...): edits every variant shares, whose prefix the variants
resume from (the corrupted prefix of activation patching)."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.model.adapter import ModelAdapter
from tests.tiny_models import make_tiny

IDS = [[1, 5, 9, 14, 22, 31], [1, 7, 8, 40, 41, 42]]


def _noise(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    out[:, 2] += torch.linspace(-3, 3, x.shape[-1], dtype=x.dtype)
    return out


def _restore(value: torch.Tensor, position: int):
    def fn(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, position] = value
        return out
    return fn


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_variants_with_shared_edits_equal_separate_runs_and_resume_after_the_shared_prefix(arch):
    model = ModelAdapter(make_tiny(arch))
    clean = interlayer.collect(model, IDS, "resid_post.*", progress=False)
    rows = clean.meta["sequence"] == 0
    value = {l: clean[f"resid_post.{l}"][rows][2] for l in range(model.n_layers)}  # position 3 of sequence 0: row 2
    variants = [{}] + [{f"resid_post.{l}": _restore(value[l], 3)} for l in range(model.n_layers)]
    calls: list[int] = []
    handles = [b.mlp.register_forward_hook(lambda *_a, i=i: calls.append(i))  # runs only where the block runs
               for i, b in enumerate(model.blocks)]
    try:
        shared = interlayer.collect_variants(model, IDS, ["ln_final"], variants, edits={"resid_pre.0": _noise},
                                             select="last", progress=False, check_padding=False)
    finally:
        for h in handles:
            h.remove()
    n = model.n_layers
    # the corrupted run whole, then each restoration at layer l runs only the blocks after l
    assert calls.count(0) == 1 and len(calls) == n + sum(n - 1 - l for l in range(n))
    for variant, got in zip(variants, shared):
        alone = interlayer.collect(model, IDS, ["ln_final"], edits={"resid_pre.0": _noise, **variant}, select="last",
                                   progress=False, check_padding=False)
        torch.testing.assert_close(got["ln_final"], alone["ln_final"], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shared[0]["ln_final"], shared[1]["ln_final"])  # the restorations change the result


def test_a_variant_editing_a_shared_site_is_refused():
    model = ModelAdapter(make_tiny("llama"))
    with pytest.raises(interlayer.InterlayerError, match="variant 1 edits 'resid_pre.0', which edits= edits"):
        interlayer.collect_variants(model, IDS, "resid_post.0", [{}, {"resid_pre.0": _noise}],
                                    edits={"resid_pre.0": _noise}, progress=False)
