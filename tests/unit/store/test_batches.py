"""Batches built with tensor operations against the per-row construction they replaced
(copied below as the reference), and the one-operation id check's messages."""

from __future__ import annotations

import types

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.model.padding import pad_rows, row_span
from interlayer.store.inputs import Tokenized, TokenSequence, make_batch, unpacked_batches

BOS = 1


def reference_pad_rows(rows, pad_id, side="right"):
    """``pad_rows`` before issue 25: one ``torch.tensor`` per row."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = row_span(len(row), width, side)
        ids[i, span] = torch.tensor(list(row), dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def reference_make_batch(sequences, pad_id, padding_side, bos_id):
    """``make_batch`` before issue 25."""
    input_ids, mask = reference_pad_rows([s.ids for s in sequences], pad_id, padding_side)
    documents, _ = reference_pad_rows([s.documents for s in sequences], -1, padding_side)
    width = input_ids.shape[1]
    bos = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if bos_id is not None and seq.ids[0] == bos_id:
            bos[row, row_span(len(seq.ids), width, padding_side).start] = True
    index = torch.tensor([s.index for s in sequences], dtype=torch.long)
    return input_ids, mask, index, documents, bos


def _model(vocab: int = 64, bos: int | None = BOS):
    return types.SimpleNamespace(tokenizer=None, max_positions=64, bos_token_id=bos, eos_token_id=2, pad_token_id=0,
                                 vocab_size=vocab, name="stand-in", device=torch.device("cpu"))


def _lists(seed: int, equal: bool = False) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [7] * 6 if equal else [int(n) for n in torch.randint(1, 15, (9,), generator=g)]
    rows = [torch.randint(0, 60, (n,), generator=g).tolist() for n in lengths]
    for row in rows[::2]:
        row[0] = BOS  # some rows lead with BOS, some do not
    return rows


def _check(sequences, side, bos_id):
    got = make_batch(sequences, 0, side, bos_id)
    want = reference_make_batch([TokenSequence(s.index, list(map(int, s.ids)), list(map(int, s.documents)))
                                 for s in sequences], 0, side, bos_id)
    for name, a, b in zip(["input_ids", "attention_mask", "sequence_index", "documents", "bos"],
                          [got.input_ids, got.attention_mask, got.sequence_index, got.documents, got.bos], want):
        assert a.dtype == b.dtype and torch.equal(a, b), name


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bos_id", [BOS, None])
@pytest.mark.parametrize("equal", [False, True])
def test_make_batch_equals_the_per_row_reference(side, bos_id, equal):
    rows = _lists(0, equal)
    _check([TokenSequence(i + 2, r, [i] * len(r)) for i, r in enumerate(rows)], side, bos_id)
    packed = [TokenSequence(i, r, [i // 2 + j // 3 for j in range(len(r))]) for i, r in enumerate(rows)]
    _check(packed, side, bos_id)  # documents vary within a row, as in packed contexts
    tensors = [TokenSequence(i, torch.tensor(r), torch.full((len(r),), i)) for i, r in enumerate(rows)]
    _check(tensors, side, bos_id)  # the rows of a token tensor


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_rows_equals_the_per_row_reference(side):
    for rows in (_lists(1), _lists(2, equal=True), [[5]], [[], [3, 4]], [(1, 2, 3), range(4)]):
        got, want = pad_rows(rows, -7, side), reference_pad_rows(rows, -7, side)
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want))
    tensors = [torch.tensor(r) for r in _lists(3)]
    assert all(torch.equal(a, b) for a, b in zip(pad_rows(tensors, 0, side), reference_pad_rows(_lists(3), 0, side)))


def test_token_tensor_rows_are_batched_as_tensors():
    ids = torch.randint(4, 60, (10, 6))
    ids[:, 0] = BOS
    batches, total = unpacked_batches(Tokenized(_model()), ids, 4)
    groups = list(batches)
    assert total == 10 and [len(g) for g in groups] == [4, 4, 2]
    assert all(isinstance(s.ids, torch.Tensor) for g in groups for s in g)
    batch = make_batch(groups[0], 0, "right", BOS)
    assert torch.equal(batch.input_ids, ids[:4]) and bool(batch.attention_mask.all()) and bool(batch.bos[:, 0].all())


@pytest.mark.parametrize("form", ["tensor", "lists"])
def test_out_of_range_ids_name_the_first_bad_id_and_the_range(form):
    ids = torch.randint(4, 60, (5, 6))
    ids[2, 3], ids[3, 1] = 64, -1  # the first bad id in row-major order is 64
    data = ids if form == "tensor" else ids.tolist()
    with pytest.raises(InterlayerError) as err:
        list(unpacked_batches(Tokenized(_model()), data, 2)[0])
    assert str(err.value) == "token id 64 is out of range; stand-in has ids 0..63"
    ids[2, 3] = 5
    with pytest.raises(InterlayerError, match=r"^token id -1 is out of range; stand-in has ids 0\.\.63$"):
        list(unpacked_batches(Tokenized(_model()), ids if form == "tensor" else ids.tolist(), 2)[0])


def test_a_bad_id_beyond_limit_is_not_read():
    ids = torch.randint(4, 60, (5, 6))
    ids[4, 0] = 999
    batches, total = unpacked_batches(Tokenized(_model()), ids, 2, limit=4)
    assert total == 4 and sum(len(g) for g in batches) == 4


def test_the_id_check_is_one_tensor_operation(monkeypatch):
    """A token tensor is never turned into Python ints to be checked or batched."""
    from interlayer.store.selection import Selector

    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: pytest.fail("a token tensor went through tolist()"))
    ids = torch.randint(4, 60, (6, 5))
    groups = list(unpacked_batches(Tokenized(_model()), ids, 4)[0])
    assert [len(g) for g in groups] == [4, 2]
    for side in ("right", "left"):
        batch = make_batch(groups[1], 0, side, BOS)
        assert Selector("tokens", batch, torch.device("cpu")).n_rows == 10
