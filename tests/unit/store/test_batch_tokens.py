"""A batch of long sequences is split by padded tokens (interlayer.store.batching):
the rows stay the same, the forward passes get smaller."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.model.adapter import ModelAdapter
from interlayer.store.batching import forward_bytes_per_token, forward_token_budget, split_by_tokens
from interlayer.store.inputs import TokenSequence
from tests.tiny_models import make_tiny


def _sequences(lengths):
    return [TokenSequence(index, list(range(5, 5 + n)), [0] * n) for index, n in enumerate(lengths)]


def test_a_batch_over_the_budget_is_split_in_order():
    batch = _sequences([40, 38, 35, 30, 20, 10, 9])
    parts = list(split_by_tokens([batch], max_tokens=100))
    assert [len(p) for p in parts] == [2, 2, 2, 1]  # 100 // 40 sequences of the batch's longest each
    assert [s for p in parts for s in p] == batch
    assert all(len(p) * max(len(s.ids) for s in batch) <= 100 for p in parts)


def test_a_batch_within_the_budget_and_a_sequence_longer_than_it_pass():
    small = _sequences([10, 9, 8])
    assert list(split_by_tokens([small], max_tokens=30)) == [small]
    long = _sequences([500, 400])
    assert [len(p) for p in split_by_tokens([long], max_tokens=100)] == [1, 1]


def test_the_default_budget_follows_the_model_width_and_memory(tmp_path):
    model = ModelAdapter(make_tiny("llama"))  # d 32, d_mlp 64, 4 heads, float32
    assert forward_bytes_per_token(model, 10) == (3 * 64 + 6 * 32) * 4 + 4 * 10 * 4
    assert forward_token_budget(model, 1.0, 10) == 2**20 // ((3 * 64 + 6 * 32) * 4 + 160)
    assert forward_token_budget(model, 1e-6, 10) == 10  # never less than one sequence
    gpt2 = ModelAdapter(make_tiny("gpt2"))  # no intermediate_size: GPT-2's 4 x d
    assert forward_bytes_per_token(gpt2, 1) == (3 * 128 + 6 * 32) * 4 + 4 * 4


def test_split_batches_give_the_same_rows_in_fewer_tokens_per_pass():
    model = ModelAdapter(make_tiny("llama"))
    torch.manual_seed(0)
    ids = [torch.randint(5, 60, (n,)).tolist() for n in (30, 28, 25, 20, 12, 6, 5, 3)]
    widths: list[int] = []
    handle = model.embed.register_forward_hook(lambda _m, args, _o: widths.append(args[0].numel()))
    try:
        whole = interlayer.collect(model, ids, ["resid_post.1", "resid_post.2"], batch_size=8, progress=False,
                                   check_padding=False)
        passes_whole, widths[:] = len(widths), []
        split = interlayer.collect(model, ids, ["resid_post.1", "resid_post.2"], batch_size=8, batch_tokens=60,
                                   progress=False, check_padding=False)
    finally:
        handle.remove()
    assert passes_whole == 1 and len(widths) == 4 and max(widths) <= 60
    for site in ("resid_post.1", "resid_post.2"):
        torch.testing.assert_close(split[site], whole[site], atol=1e-5, rtol=1e-5)
    assert torch.equal(split.meta["sequence"], whole.meta["sequence"])


def test_batch_tokens_below_one_is_refused_before_any_pass():
    model = ModelAdapter(make_tiny("llama"))
    with pytest.raises(interlayer.InterlayerError, match="batch_tokens"):
        interlayer.collect(model, [[5, 6, 7]], "resid_post.0", batch_tokens=0, progress=False)
