"""CachedSource reads ahead on a thread and shuffles with the lazy Feistel order: the
same batches in the same order as reading each batch when asked; errors propagate; the
order before (randperm) stays available, and the identity says which one a run used."""

import threading

import pytest
import torch

import interlayer
from interlayer import cache
from interlayer.errors import InterlayerError
from interlayer.io.seeding import epoch_permutation
from interlayer.saes.sources import CachedSource
from tests.tiny_models import make_tiny

DOCS = [[4 + (7 * j + i) % 60 for i in range(5 + j % 9)] for j in range(120)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    model = interlayer.load_model(make_tiny("llama"))
    return cache(model, DOCS, ["resid_post.1", "mlp_out.0"], tmp_path_factory.mktemp("c") / "c", tokens=300,
                 context_length=8, batch_size=4, progress=False)


def take(source, count, state=None):
    out = []
    for batch, _ in zip(source.batches(state), range(count)):
        out.append((batch.x.clone(), batch.state, batch.where(0)))
    return out


@pytest.mark.parametrize("site", ["resid_post.1", ["resid_post.1", "mlp_out.0"]])
def test_prefetched_batches_are_the_batches_read_when_asked(store, site):
    eager = take(CachedSource(store, site, 32, seed=3, prefetch=0), 25)  # 9 batches an epoch: three epochs
    for depth in (1, 2):
        ahead = take(CachedSource(store, site, 32, seed=3, prefetch=depth), 25)
        assert [s for _, s, _ in ahead] == [s for _, s, _ in eager] and [w for *_, w in ahead] == [w for *_, w in eager]
        assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(ahead, eager))
    resumed = take(CachedSource(store, site, 32, seed=3), 5, {"batches": 20})
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(resumed, eager[20:]))
    assert not [t for t in threading.enumerate() if t.name == "interlayer-prefetch"]


def test_the_old_order_stays_available_and_the_identity_names_the_new_one(store):
    old = CachedSource(store, "resid_post.1", 32, seed=3, shuffle="randperm")
    rows = store.load("resid_post.1")
    order = epoch_permutation(store.n_rows, 3, 0)
    for b, batch in zip(range(9), old.batches()):
        assert torch.equal(batch.x, rows[order[b * 32:(b + 1) * 32]].float())
    assert "shuffle" not in old.identity()  # as the checkpoints written before the Feistel order
    new = CachedSource(store, "resid_post.1", 32, seed=3)
    assert new.identity() == {**old.identity(), "shuffle": "feistel-v1"}
    seen = torch.cat([b.x for _, b in zip(range(9), new.batches())])
    assert not torch.equal(seen, torch.cat([b.x for _, b in zip(range(9), old.batches())]))
    assert seen.shape == (288, rows.shape[1])
    index = torch.cat([i for _, i in store.batches("resid_post.1", 32, seed=3, drop_last=True, with_index=True)])
    assert index.unique().numel() == 288 and torch.equal(seen, rows[index].float())  # one epoch: each row once
    with pytest.raises(InterlayerError, match="unknown shuffle 'sorted'; valid choices: 'feistel', 'randperm'"):
        CachedSource(store, "resid_post.1", 32, shuffle="sorted")


def test_a_failed_read_is_raised_in_the_caller(store, monkeypatch):
    source = CachedSource(store, "resid_post.1", 32, prefetch=2)
    real = type(store)._gather
    calls = []

    def gather(self, site, index, pinned=False):
        calls.append(1)
        if len(calls) == 4:
            raise OSError("the disk went away")
        return real(self, site, index, pinned)

    monkeypatch.setattr(type(store), "_gather", gather)
    batches = source.batches()
    got = [next(batches) for _ in range(3)]
    with pytest.raises(OSError, match="the disk went away"):
        next(batches)
    assert len(got) == 3
    assert not [t for t in threading.enumerate() if t.name == "interlayer-prefetch"]
