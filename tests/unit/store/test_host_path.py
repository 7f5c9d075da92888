"""The store's write and host paths against the paths they replace: per-site writes without a
temporary equal ``selector(x).to(dtype)`` bit for bit; the asynchronous host stage, simulated
on the CPU by a stage that runs each copy only at its synchronisation points, gives the rows
of the synchronous path and never overwrites a chunk a consumer keeps; rows are stored in the
model's dtype by default."""

from __future__ import annotations

import pytest
import torch

import interlayer
import interlayer.store.collect as store
from interlayer import collect, collect_variants, stream
from interlayer.store.capture import row_writer, token_span
from interlayer.store.host import HostStage, host_stage
from interlayer.store.inputs import TokenSequence, make_batch
from interlayer.store.options import CollectOptions, resolve_storage_dtype
from interlayer.store.selection import Selector
from tests.tiny_models import make_tiny

SEQUENCES = [[1, 5, 6, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14, 15], [1, 16], [1, 17, 18, 19, 20, 21, 22, 23],
             [1, 24, 25, 26], [1, 30, 31, 32, 33, 34], [1, 40, 41, 42, 43, 44]]
SITES = ["resid_post.0", "resid_post.2"]


def _batch(rows, side="right", bos=1):
    return make_batch([TokenSequence(i, list(r), [i] * len(r)) for i, r in enumerate(rows)], 0, side, bos)


BATCHES = {
    "unpadded": [[1, 5, 6, 7], [1, 8, 9, 10], [1, 11, 12, 13]],
    "unpadded_no_bos": [[5, 6, 7], [8, 9, 10]],
    "padded": [[1, 5, 6, 7, 8], [1, 9], [1, 10, 11]],
    "one_row": [[1, 5, 6]],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("select", ["tokens", "last", "positions", "mean", "weighted_mean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_writes_without_a_temporary_equal_the_gather_they_replace(name, side, select, dtype):
    rows = BATCHES[name]
    batch = _batch(rows, side)
    positions = [[0, -1, 1] for _ in rows] if select == "positions" else None
    selector = Selector(select, batch, torch.device("cpu"), positions)
    torch.manual_seed(0)
    x = torch.randn(*batch.input_ids.shape, 16)
    out = torch.full((selector.n_rows, 16), float("nan"), dtype=dtype)
    row_writer(selector, batch)(x, out)
    assert torch.equal(out, selector(x).to(dtype))


def test_the_strided_path_is_taken_exactly_where_the_rows_are_contiguous():
    assert token_span("tokens", _batch(BATCHES["unpadded"])) == (1, 3)
    assert token_span("tokens", _batch(BATCHES["unpadded_no_bos"])) == (0, 3)
    assert token_span("last", _batch(BATCHES["padded"], "left")) == (4, 1)
    assert token_span("tokens", _batch(BATCHES["padded"])) is None
    assert token_span("last", _batch(BATCHES["padded"], "right")) is None
    assert token_span("positions", _batch(BATCHES["unpadded"])) is None
    for name, rows in BATCHES.items():  # the selector's narrower flag agrees where it is set
        if Selector("tokens", _batch(rows), torch.device("cpu")).contiguous_tokens:
            assert token_span("tokens", _batch(rows)) == (1, len(rows[0]) - 1), name


class DeferredStage(HostStage):
    """An asynchronous stage on the CPU: each copy is queued and runs only when the real
    stage's GPU would have run it at the latest (a fence, or the chunk's event), so a write
    into the device buffers before its fence would corrupt the rows, as on a GPU."""

    asynchronous = True
    fence = True
    log: list[str] = []

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _copy(self, host, rows):
        self.queue.append((host, rows))
        DeferredStage.log.append("copy")

    def _flush(self):
        for host, rows in self.queue:
            host.copy_(rows)
        self.queue.clear()

    def _fence(self):
        DeferredStage.log.append("fence")
        if self.fence:
            self._flush()

    def _event(self):
        stage = self

        class Event:
            def synchronize(self):
                DeferredStage.log.append("wait")
                stage._flush()

        return Event()


class NoFenceStage(DeferredStage):
    fence = False


def _use_stage(monkeypatch, cls):
    monkeypatch.setattr(store, "host_stage", lambda device, on_device: None if on_device else cls())
    DeferredStage.log = []


def _model():
    return interlayer.load_model(make_tiny("llama"))


BUDGET = 12 * (2 * 32 * 4 + 64 * 4 + 32) / 2**20  # about 12 rows a chunk: many chunks


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_asynchronous_host_rows_equal_the_synchronous_ones_and_kept_chunks_are_never_overwritten(
        monkeypatch, padding_side):
    model = _model()
    kwargs = dict(batch_size=2, memory_mb=BUDGET, logits=True, padding_side=padding_side, progress=False)
    plain = list(stream(model, SEQUENCES, SITES, **kwargs))
    _use_stage(monkeypatch, DeferredStage)
    kept = []
    for chunk in stream(model, SEQUENCES, SITES, **kwargs):
        kept.append((chunk, {k: v.clone() for k, v in chunk.tensors.items()}))
    assert len(kept) == len(plain) > 2
    assert DeferredStage.log.count("copy") == 3 * len(SEQUENCES) // 2  # 2 sites + logits, each batch
    for (chunk, snapshot), ref in zip(kept, plain):
        for name, tensor in ref.tensors.items():
            assert torch.equal(chunk.tensors[name], tensor)  # every copy ran, of the rows it was given
            assert torch.equal(snapshot[name], tensor)  # held chunks: never written after they came
        assert all(torch.equal(chunk.meta[k], ref.meta[k]) for k in ref.meta)
    ptrs = [chunk.tensors[SITES[0]].data_ptr() for chunk, _ in kept]
    assert len(set(ptrs)) == len(ptrs)


def test_without_the_fence_the_simulated_stage_corrupts_rows(monkeypatch):
    """The check above can fail: a stage whose first write of a chunk does not wait for the
    last chunk's copies hands over rows the next batch already overwrote."""
    model = _model()
    kwargs = dict(batch_size=2, memory_mb=BUDGET, logits=True, progress=False)
    plain = list(stream(model, SEQUENCES, SITES, **kwargs))
    _use_stage(monkeypatch, NoFenceStage)
    broken = list(stream(model, SEQUENCES, SITES, **kwargs))
    assert not all(torch.equal(a.tensors[SITES[1]], b.tensors[SITES[1]]) for a, b in zip(broken, plain))


def test_chunk_n_is_handed_over_after_chunk_n_plus_1_is_launched(monkeypatch):
    model = _model()
    _use_stage(monkeypatch, DeferredStage)
    order = []
    real = store.run_shared
    monkeypatch.setattr(store, "run_shared", lambda *a: (order.append("run"), real(*a)))
    for _ in stream(model, SEQUENCES, SITES, batch_size=2, memory_mb=BUDGET, progress=False):
        order.append("chunk")
    first = order.index("chunk")
    assert order[first - 2:first + 1] == ["run", "run", "chunk"]  # the next chunk's first batch ran first
    assert order[-1] == "chunk"


def test_collect_through_the_asynchronous_stage_equals_the_plain_collect(monkeypatch):
    model = _model()
    kwargs = dict(batch_size=3, memory_mb=BUDGET, logits=True, progress=False)
    plain = collect(model, SEQUENCES, SITES, **kwargs)
    plain_variants = collect_variants(model, SEQUENCES, SITES, [{}, {"resid_post.1": torch.zeros_like}], **kwargs)
    _use_stage(monkeypatch, DeferredStage)
    staged = collect(model, SEQUENCES, SITES, **kwargs)
    variants = collect_variants(model, SEQUENCES, SITES, [{}, {"resid_post.1": torch.zeros_like}], **kwargs)
    for a, b in [(staged, plain), *zip(variants, plain_variants)]:
        assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in b.tensors)
        assert all(torch.equal(a.meta[k], b.meta[k]) for k in b.meta)


def test_the_stage_of_each_device():
    assert host_stage(torch.device("cpu"), on_device=False) is None  # host memory already: handed over
    assert host_stage(torch.device("cpu"), on_device=True) is None
    assert type(host_stage(torch.device("meta"), on_device=False)) is HostStage  # synchronous copies


# ------------------------------------------------------------- storage dtype
def test_rows_are_stored_in_the_models_dtype_by_default_and_float32_stays_available():
    assert CollectOptions().storage_dtype == "model"
    model = _model()
    assert collect(model, SEQUENCES, SITES, progress=False)[SITES[0]].dtype == torch.float32
    half = interlayer.load_model(make_tiny("llama").to(torch.bfloat16))
    rows = collect(half, SEQUENCES, SITES, logits=True, progress=False)
    assert rows[SITES[0]].dtype == torch.bfloat16 and rows["logits"].dtype == torch.float32
    assert torch.equal(rows[SITES[0]], collect(half, SEQUENCES, SITES, storage_dtype="bf16", progress=False)[SITES[0]])
    full = collect(half, SEQUENCES, SITES, storage_dtype="float32", progress=False)[SITES[0]]
    assert full.dtype == torch.float32 and torch.equal(full, rows[SITES[0]].float())
    means = collect(half, SEQUENCES, SITES, select="mean", progress=False)[SITES[0]]  # float32 means: kept as such
    assert means.dtype == torch.float32
    assert torch.equal(means, collect(half, SEQUENCES, SITES, select="mean", storage_dtype="float32",
                                      progress=False)[SITES[0]])
    assert resolve_storage_dtype("model", torch.float64) == torch.float32
    assert resolve_storage_dtype("fp16", torch.bfloat16) == torch.float16


# ------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned, side-stream host path needs a CUDA device")


@cuda
def test_cuda_host_rows_are_pinned_and_equal_the_device_rows():
    model = interlayer.load_model(make_tiny("llama").cuda())
    kwargs = dict(batch_size=2, memory_mb=BUDGET, logits=True, progress=False)
    on_device = [{k: v.cpu() for k, v in c.tensors.items()}
                 for c in stream(model, SEQUENCES * 4, SITES, output_device="model", **kwargs)]
    kept = []
    for chunk in stream(model, SEQUENCES * 4, SITES, **kwargs):
        kept.append((chunk, {k: v.clone() for k, v in chunk.tensors.items()}))
    assert len(kept) == len(on_device) > 2
    for (chunk, snapshot), ref in zip(kept, on_device):
        for name, tensor in ref.items():
            assert chunk.tensors[name].is_pinned() and chunk.tensors[name].device.type == "cpu"
            assert torch.equal(chunk.tensors[name], tensor) and torch.equal(snapshot[name], tensor)
    whole = collect(model, SEQUENCES * 4, SITES, **kwargs)
    ref = collect(model, SEQUENCES * 4, SITES, output_device="model", **kwargs)
    assert all(torch.equal(whole.tensors[k], ref.tensors[k].cpu()) for k in ref.tensors)


@cuda
def test_cuda_writes_without_a_temporary_equal_the_gather():
    batch = _batch(BATCHES["padded"])
    selector = Selector("tokens", batch, torch.device("cuda"))
    x = torch.randn(*batch.input_ids.shape, 16, device="cuda", dtype=torch.bfloat16)
    for dtype in (torch.bfloat16, torch.float32):
        out = torch.empty((selector.n_rows, 16), dtype=dtype, device="cuda")
        row_writer(selector, batch)(x, out)
        assert torch.equal(out, selector(x).to(dtype))
