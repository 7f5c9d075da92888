"""How the cost of the store's inputs grows (issue 25, item 7): packing is linear in the
document's length, and unpacked inputs stream one window at a time, with memory flat in
the number of documents. Ratios and counts, never wall-clock thresholds."""

from __future__ import annotations

import time
import tracemalloc
import types
import warnings

import pytest
import torch

import interlayer
from interlayer.store import inputs as store_inputs
from interlayer.store.collect import _plan
from interlayer.store.inputs import (WINDOW_BATCHES, EmptyInputError, Tokenized, TokenSequence, batches_by_length,
                                     unpacked_batches, windowed_batches)
from interlayer.store.options import CollectOptions

BOS, EOS, VOCAB = 1, 2, 50_000


def _model(max_positions: int = 4096):
    """What tokenizing and batching token ids read from a model (its widths for the
    per-pass token budget, interlayer.store.batching), and nothing else."""
    config = types.SimpleNamespace(intermediate_size=64, num_attention_heads=4)
    return types.SimpleNamespace(tokenizer=None, max_positions=max_positions, bos_token_id=BOS, eos_token_id=EOS,
                                 pad_token_id=0, vocab_size=VOCAB, name="stand-in", device=torch.device("cpu"),
                                 model=types.SimpleNamespace(config=config), d_model=32, dtype=torch.float32)


def _document(n: int) -> list[int]:
    return torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist()


def reference_packed(documents: list[list[int]], context_length: int) -> list[tuple[list[int], list[int]]]:
    """Packing as written plainly: BOS, then the documents end to end, cut every
    ``context_length - 1`` text tokens; the last, shorter context kept."""
    ids = [t for d in documents for t in d]
    docs = [i for i, d in enumerate(documents) for _ in d]
    body = context_length - 1
    return [([BOS] + ids[i:i + body], [docs[i]] + docs[i:i + body]) for i in range(0, len(ids), body)]


def test_packed_contexts_equal_the_plain_reference():
    documents = [_document(n) for n in (5, 300, 1, 127, 128, 1000)]
    got = [(c.ids, c.documents) for c in Tokenized(_model()).packed(documents, 128)]
    assert got == reference_packed(documents, 128)
    assert [c.index for c in Tokenized(_model()).packed(documents, 128)] == list(range(len(got)))


def _seconds_per_token(n: int) -> float:
    document = _document(n)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _context in Tokenized(_model()).packed([document], 128):
            pass
        best = min(best, time.perf_counter() - start)
    return best / n


def test_packing_a_long_document_costs_the_same_per_token():
    """1M tokens against 10k: a list shifted at every cut (``del ids[:body]``) costs
    O(L^2 / C), about 17x per token already at 300k; a moving offset stays flat."""
    small, large = _seconds_per_token(10_000), _seconds_per_token(1_000_000)
    assert large < 3 * small, (small, large)


def _packing_peak(n: int) -> int:
    document = _document(n)
    tracemalloc.start()
    try:
        for _context in Tokenized(_model()).packed([document], 128):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_packing_memory_is_the_document_and_one_context():
    """Producing the contexts one by one holds the document's copy (ids and documents,
    8 bytes a token each) and one context: O(document), never more per token at 1M."""
    small, large = _packing_peak(10_000), _packing_peak(1_000_000)
    assert large < 40 * 1_000_000, large  # the ids and their documents, a list each: 16 bytes a token, plus slack
    assert large / 1_000_000 < 1.5 * small / 10_000 + 8, (small, large)


def _counting(n: int, consumed: list[int]):
    for i in range(n):
        consumed[0] += 1
        yield [BOS] + [4 + (7 * i + j) % 500 for j in range(1 + (13 * i) % 29)]


def test_the_first_batch_comes_after_one_window():
    consumed = [0]
    opts = CollectOptions(batch_size=4, progress=False)
    batches, total = _plan(_model(), _counting(10_000, consumed), opts)
    assert total is None  # a generator does not say how long it is
    first = next(batches)
    assert len(first) == 4 and consumed[0] <= WINDOW_BATCHES * 4
    assert sum(len(g) for g in batches) == 10_000 - 4 and consumed[0] == 10_000


def _plan_peak(n: int) -> int:
    consumed = [0]
    tracemalloc.start()
    try:
        batches, _ = unpacked_batches(Tokenized(_model()), _counting(n, consumed), 4)
        for _group in batches:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_planning_memory_is_flat_in_the_number_of_documents():
    """Tokenized sequences live for one window: the peak at 20k documents is that at 1k
    (a global sort would hold all 20k, 20x)."""
    small, large = _plan_peak(1_000), _plan_peak(20_000)
    assert large < 2 * small, (small, large)


def test_windows_sort_by_length_within_each_window_and_keep_every_sequence():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 40, (1000,), generator=g).tolist()
    sequences = [TokenSequence(i, [BOS] * n, [i] * n) for i, n in enumerate(lengths)]
    groups = list(windowed_batches(sequences, 3, window=10))
    assert sorted(s.index for g in groups for s in g) == list(range(1000))
    for start in range(0, 1000, 30):  # window by window: exactly the global sort of that window
        window_groups = groups[start // 3:(start + 30) // 3]
        assert window_groups == batches_by_length(sequences[start:start + 30], 3)
    assert list(windowed_batches(sequences[:30], 3, window=10)) == batches_by_length(sequences[:30], 3)


def test_totals_limits_truncation_and_empty_inputs_across_windows(monkeypatch):
    monkeypatch.setattr(store_inputs, "WINDOW_BATCHES", 2)  # windows of 2 batches: 8 sequences
    documents = [[BOS] + [5] * (7 * i % 90) for i in range(50)]  # 11 of the first 45 longer than 64 tokens
    tok = Tokenized(_model(max_positions=64))
    with pytest.warns(UserWarning, match=r"^11 sequence\(s\) longer than 64 tokens were truncated$"):
        batches, total = unpacked_batches(tok, documents, 4, limit=45)
        assert total == 45  # a list says its length (less the limit)
        seen = [s.index for g in batches for s in g]
    assert sorted(seen) == list(range(45))
    small, total = unpacked_batches(Tokenized(_model()), documents[:5] + [[]], 4)
    assert total == 5  # the whole input in the first window: the exact count, empty documents left out
    with pytest.raises(EmptyInputError):
        unpacked_batches(Tokenized(_model()), (d for d in [[], [], []]), 4)  # raised before any batch is taken
    with pytest.raises(EmptyInputError):
        unpacked_batches(Tokenized(_model()), torch.zeros((3, 0), dtype=torch.long), 4)


def test_collect_over_several_windows_equals_one_window(monkeypatch):
    """Rows come back in input order however the windows cut the batches."""
    from tests.tiny_models import make_tiny

    model = interlayer.load_model(make_tiny("llama"))
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(0, 30, (40,), generator=g).tolist()
    seqs = [[BOS] + torch.randint(4, 64, (n,), generator=g).tolist() for n in lengths]
    one = interlayer.collect(model, seqs, ["resid_post.1"], batch_size=2, progress=False)
    monkeypatch.setattr(store_inputs, "WINDOW_BATCHES", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        many = interlayer.collect(model, seqs, ["resid_post.1"], batch_size=2, progress=False)
    for key in one.meta:
        assert torch.equal(one.meta[key], many.meta[key]), key
    torch.testing.assert_close(many["resid_post.1"], one["resid_post.1"], atol=1e-5, rtol=0)
