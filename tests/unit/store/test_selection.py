"""The Selector, built on the host, against the device-side Selector it replaced
(copied below as the reference): the same rows, in the same order, with the same metadata."""

from __future__ import annotations

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.store.inputs import Batch, TokenSequence, make_batch
from interlayer.store.selection import POOLED, SELECTIONS, Selector

BOS = 1


class ReferenceSelector:
    """The Selector before issue 25 (indices and metadata computed on the device, then
    copied back): kept verbatim as the reference."""

    def __init__(self, select, batch, device, positions=None):
        self.select = select
        mask = batch.attention_mask.to(device).bool()
        order = (mask.long().cumsum(-1) - 1)
        b, s = mask.shape
        meta = {}
        if select == "tokens":
            keep = mask & ~batch.bos.to(device)
            rows, cols = keep.nonzero(as_tuple=True)
        elif select == "last":
            rows = torch.arange(b, device=device)
            cols = (torch.where(mask, torch.arange(s, device=device), -1)).max(-1).values
        elif select == "positions":
            rows, cols = self._positions(batch, mask, positions, device)
        if select in POOLED:
            weights = mask.float() if select == "mean" else (order + 1).float() * mask
            self.weights = (weights / weights.sum(-1, keepdim=True)).unsqueeze(1)
            meta["sequence"] = batch.sequence_index.clone()
            self.n_rows = b
        else:
            self.rows, self.cols = rows, cols
            meta["sequence"] = batch.sequence_index.to(device)[rows].cpu()
            meta["position"] = order[rows, cols].cpu()
            meta["token_id"] = batch.input_ids.to(device)[rows, cols].cpu()
            meta["document"] = batch.documents.to(device)[rows, cols].cpu()
            self.n_rows = int(rows.numel())
        self.meta = meta

    @staticmethod
    def _positions(batch, mask, positions, device):
        lengths = mask.sum(-1).tolist()
        starts = (mask.long().argmax(-1)).tolist()
        rows, cols = [], []
        for row, seq in enumerate(batch.sequence_index.tolist()):
            for pos in positions[seq]:
                n = lengths[row]
                rows.append(row)
                cols.append(starts[row] + (pos % n))
        return torch.tensor(rows, dtype=torch.long, device=device), torch.tensor(cols, dtype=torch.long, device=device)

    def __call__(self, x):
        if self.select in POOLED:
            return torch.bmm(self.weights.to(x.device), x.float()).squeeze(1)
        return x[self.rows, self.cols]


def _sequences(bos: bool, equal: bool = False, seed: int = 0) -> list[TokenSequence]:
    g = torch.Generator().manual_seed(seed)
    lengths = [9] * 5 if equal else [int(n) for n in torch.randint(1, 12, (7,), generator=g)]
    out = []
    for index, n in enumerate(lengths):
        ids = torch.randint(4, 60, (n,), generator=g).tolist()
        if bos:
            ids[0] = BOS
        out.append(TokenSequence(3 * index + 1, ids, [100 + index] * n))  # sequence indices need not be 0..n-1
    return out


def _positions(sequences: list[TokenSequence]) -> list[list[int]]:
    positions = [[] for _ in range(max(s.index for s in sequences) + 1)]
    for s in sequences:
        n = len(s.ids)
        positions[s.index] = sorted({0, n - 1, -1, -n, (n // 2)}) + ([1, -2] if n > 1 else [])
    return positions


def _assert_same(new: Selector, ref: ReferenceSelector, batch: Batch) -> None:
    assert new.n_rows == ref.n_rows
    assert new.meta.keys() == ref.meta.keys()
    for key in ref.meta:
        assert torch.equal(new.meta[key], ref.meta[key]), key
        assert new.meta[key].dtype == ref.meta[key].dtype and new.meta[key].device.type == "cpu"
    x = torch.randn(*batch.input_ids.shape, 5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(new(x), ref(x))
    if new.select in POOLED:
        assert torch.equal(new.weights, ref.weights)
    else:
        assert torch.equal(new.rows, ref.rows) and torch.equal(new.cols, ref.cols)
        assert new.rows.dtype == new.cols.dtype == torch.long


@pytest.mark.parametrize("select", SELECTIONS)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("equal", [True, False])
def test_selector_equals_the_device_side_reference(select, side, bos, equal):
    sequences = _sequences(bos, equal)
    batch = make_batch(sequences, 0, side, BOS if bos else None)
    positions = _positions(sequences) if select == "positions" else None
    _assert_same(Selector(select, batch, torch.device("cpu"), positions),
                 ReferenceSelector(select, batch, torch.device("cpu"), positions), batch)


@pytest.mark.parametrize("select", SELECTIONS)
def test_selector_reads_nothing_back_from_the_device(select):
    """On a ``meta`` device nothing can be read back: building the selector there only
    works because rows, columns and metadata are all computed from the CPU batch."""
    sequences = _sequences(True)
    batch = make_batch(sequences, 0, "left", BOS)
    positions = _positions(sequences) if select == "positions" else None
    new = Selector(select, batch, torch.device("meta"), positions)
    ref = ReferenceSelector(select, batch, torch.device("cpu"), positions)
    for key in ref.meta:
        assert torch.equal(new.meta[key], ref.meta[key]), key
    if select in POOLED:
        assert new.weights.device.type == "meta"
    else:
        assert new.rows.device.type == new.cols.device.type == "meta" and new.n_rows == ref.n_rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("select", SELECTIONS)
def test_selector_on_cuda_equals_the_reference(select):
    sequences = _sequences(True)
    batch = make_batch(sequences, 0, "right", BOS)
    positions = _positions(sequences) if select == "positions" else None
    cuda = torch.device("cuda")
    new, ref = Selector(select, batch, cuda, positions), ReferenceSelector(select, batch, cuda, positions)
    x = torch.randn(*batch.input_ids.shape, 8, device=cuda)
    assert torch.equal(new(x), ref(x))
    for key in ref.meta:
        assert torch.equal(new.meta[key], ref.meta[key]), key
    if select not in POOLED:
        assert new.rows.is_cuda and new.cols.is_cuda


@pytest.mark.parametrize("side", ["right", "left"])
def test_contiguous_tokens_is_every_position_after_the_bos(side):
    x = torch.randn(5, 9, 4)
    full = make_batch(_sequences(True, equal=True), 0, side, BOS)
    selector = Selector("tokens", full, torch.device("cpu"))
    assert selector.contiguous_tokens
    assert torch.equal(x[:, 1:].reshape(-1, 4), selector(x))
    padded = make_batch(_sequences(True), 0, side, BOS)
    no_bos = make_batch(_sequences(False, equal=True), 0, side, None)
    assert not Selector("tokens", padded, torch.device("cpu")).contiguous_tokens
    assert not Selector("tokens", no_bos, torch.device("cpu")).contiguous_tokens
    assert not Selector("last", full, torch.device("cpu")).contiguous_tokens


def test_positions_errors_are_unchanged():
    sequences = _sequences(True)
    batch = make_batch(sequences, 0, "right", BOS)
    with pytest.raises(InterlayerError, match="needs positions="):
        Selector("positions", batch, torch.device("cpu"))
    with pytest.raises(InterlayerError, match="valid positions are"):
        Selector("positions", batch, torch.device("cpu"), [[99]] * 30)
    with pytest.raises(InterlayerError, match="more input sequences"):
        Selector("positions", batch, torch.device("cpu"), [[0]])
