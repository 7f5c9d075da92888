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


# ---- entries: the kept latents row-major, against the full-sort reference


def _keep_of(e: topafa.Entries, shape) -> torch.Tensor:
    keep = torch.zeros(shape, dtype=torch.bool)
    keep[torch.repeat_interleave(torch.arange(shape[0]), e.k), e.cols] = True
    return keep


def assert_entries_match(e: topafa.Entries, keys: torch.Tensor, target: torch.Tensor, sentinel: bool = False,
                         exact: bool = True) -> None:
    """``e`` keeps what select_sorted keeps: the same k, the same latents among positive scores
    (``exact``) or the same kept scores (ties), each row's cols in descending score order."""
    scores = torch.relu(keys).square()
    ref = topafa.select_sorted(scores, target, sentinel)
    assert torch.equal(e.k, ref.k)
    assert torch.equal(e.offsets, e.k.cumsum(0) - e.k) and e.cols.numel() == int(e.k.sum())
    keep = _keep_of(e, keys.shape)
    assert torch.equal(keep.sum(-1), e.k)  # no latent twice
    if exact:
        assert torch.equal(keep & (scores > 0), ref.keep & (scores > 0))
    for row in range(keys.shape[0]):
        mine = scores[row, e.cols[e.offsets[row]:e.offsets[row] + e.k[row]]]
        assert torch.equal(mine, mine.sort(descending=True).values)  # descending score order
        assert torch.equal(mine, scores[row][ref.keep[row]].sort(descending=True).values)


def _random_keys(rows, h, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    keys = (torch.randn(rows, h, generator=gen) - 0.5) * (0.5 + torch.rand(h, generator=gen))
    target = torch.rand(rows, generator=gen) * torch.relu(keys).square().sum(-1).sqrt() * 1.5
    target[:2] = 0.0
    return keys.to(dtype), target


@pytest.mark.parametrize("rows,h,candidates", [(64, 7, 1), (128, 50, 4), (256, 2048, 64), (33, 1000, 1000),
                                               (16, 300, 8), (1, 777, 64)])
@pytest.mark.parametrize("sentinel", [False, True])
def test_entries_equal_the_full_sort_on_random_keys(rows, h, candidates, sentinel):
    keys, target = _random_keys(rows, h, seed=rows + h)
    assert_entries_match(topafa.entries(keys, target, candidates, sentinel), keys, target, sentinel)


def test_entries_on_adversarial_rows():
    h = 37
    keys = torch.rand(6, h) + 0.1
    keys[0] = 0.0  # all zero: k = 1
    keys[1] = -1.0  # all negative: k = 1
    keys[2, 1:] = -1.0  # one positive latent
    target = torch.tensor([1.0, 2.0, 3.0, 0.5, 30.0, 0.0])  # row 4 needs every latent (its total is about 16)
    for sentinel in (False, True):
        e = topafa.entries(keys, target, 4, sentinel)
        assert_entries_match(e, keys, target, sentinel)
        assert e.k.tolist()[:3] == [1, 1, 1] and e.k[4] == (h - 1 if sentinel else h)
    # the sentinel's own k = h: |sqrt(1e8) - A| beats every prefix
    far = torch.tensor([1e4, 1e4 + 1])
    e = topafa.entries(keys[3:5], far, 4, sentinel=True)
    assert_entries_match(e, keys[3:5], far, sentinel=True)
    assert e.k.tolist() == [h, h]
    one = torch.tensor([[2.0], [-1.0]])
    assert_entries_match(topafa.entries(one, torch.tensor([1.0, 1.0])), one, torch.tensor([1.0, 1.0]))


def test_entries_with_ties_keep_equal_scores():
    gen = torch.Generator().manual_seed(3)
    keys = torch.randint(-3, 4, (200, 64), generator=gen).float() / 2  # many equal scores
    target = torch.rand(200, generator=gen) * torch.relu(keys).square().sum(-1).sqrt() * 1.2
    for sentinel in (False, True):
        assert_entries_match(topafa.entries(keys, target, 8, sentinel), keys, target, sentinel, exact=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_entries_in_other_dtypes(dtype):
    keys, target = _random_keys(128, 300, seed=5, dtype=dtype)
    for sentinel in (False, True):
        assert_entries_match(topafa.entries(keys, target, 16, sentinel), keys, target, sentinel, exact=False)


def test_entries_equal_encode_entries():
    keys, target = _random_keys(256, 500, seed=7)
    norms = 0.5 + torch.rand(500, generator=torch.Generator().manual_seed(8))
    pre = keys / norms
    keys = pre * norms  # what encode computes
    f, k, (rows, cols, values) = topafa.encode(pre, norms, target, 4, entries=True)
    e = topafa.entries(keys, target, 4)
    assert torch.equal(e.k, k)
    theirs = torch.zeros(pre.shape, dtype=torch.bool)
    theirs[rows, cols] = True
    positive = keys > 0
    assert torch.equal(_keep_of(e, pre.shape) & positive, theirs & positive)
    assert torch.equal(torch.relu(pre) * _keep_of(e, pre.shape), f)
