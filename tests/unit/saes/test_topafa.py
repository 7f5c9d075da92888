"""Fast top-AFA selection equals the full-sort reference, and both follow the rule."""

import math

import pytest
import torch

from interlayer.saes import topafa


def _rule_by_hand(scores: list[float], target: float) -> int:
    """k = argmin_j |sqrt(C_j) - A|, j >= 1, first minimum, written with plain Python."""
    ordered = sorted(scores, reverse=True)
    best_k, best = 1, math.inf
    total = 0.0
    for j, s in enumerate(ordered, start=1):
        total += s
        gap = abs(math.sqrt(total) - target)
        if gap < best:
            best_k, best = j, gap
    return best_k


def test_reference_follows_the_rule_written_by_hand():
    gen = torch.Generator().manual_seed(1)
    scores = torch.relu(torch.randn(40, 23, generator=gen, dtype=torch.float64)).square()
    target = torch.rand(40, generator=gen, dtype=torch.float64) * scores.sum(-1).sqrt() * 1.3
    ref = topafa.select_sorted(scores, target)
    for row in range(40):
        k = _rule_by_hand(scores[row].tolist(), float(target[row]))
        assert int(ref.k[row]) == k
        kept = scores[row][ref.keep[row]]
        # the kept latents are the k largest scores
        assert torch.equal(kept.sort(descending=True).values, scores[row].sort(descending=True).values[:k])


@pytest.mark.parametrize("rows,h,candidates", [(64, 7, 1), (128, 50, 4), (256, 2048, 64), (33, 1000, 1000), (16, 300, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_fast_selection_equals_full_sort_on_random_scores(rows, h, candidates, seed):
    gen = torch.Generator().manual_seed(seed)
    acts = torch.relu(torch.randn(rows, h, generator=gen) - 0.5)
    scores = (acts * (0.5 + torch.rand(h, generator=gen))).square()
    # targets below, around and beyond what all latents together reach
    target = torch.rand(rows, generator=gen) * scores.sum(-1).sqrt() * 1.5
    target[:3] = 0.0
    ref = topafa.select_sorted(scores, target)
    fast = topafa.select(scores, target, candidates)
    assert torch.equal(fast.k, ref.k)
    # the code a token gets (its kept positive scores) is identical; among zero scores the
    # choice of latent is immaterial
    assert torch.equal(scores * fast.keep, scores * ref.keep)
    assert torch.equal(fast.keep & (scores > 0), ref.keep & (scores > 0))


def test_fast_selection_falls_back_when_the_candidates_cannot_reach_the_target():
    scores = torch.full((4, 100), 0.01)
    scores[:, 0] = 1.0
    target = torch.tensor([0.5, 1.0, 1.3, 10.0])  # the last needs every latent
    ref = topafa.select_sorted(scores, target)
    fast = topafa.select(scores, target, candidates=2)
    assert torch.equal(fast.k, ref.k)
    assert ref.k.tolist()[0] == 1 and ref.k.tolist()[-1] == 100


def test_all_zero_scores_keep_one_latent_and_zero_code():
    scores = torch.zeros(3, 10)
    sel = topafa.select(scores, torch.tensor([0.0, 1.0, 5.0]))
    assert sel.k.tolist() == [1, 1, 1]
    assert sel.keep.sum(-1).tolist() == [1, 1, 1]
