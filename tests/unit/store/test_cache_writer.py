"""The cache's writer thread: writes overlap the next chunk's forward pass, at most
``write_queue`` chunks wait for it, and a writer that fails (a full disk, a kill) loses
nothing already listed in the manifest; a rerun resumes to the shards of a clean run."""

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save

import interlayer
import interlayer.store.cache as cache_module
import interlayer.store.cache_files as cache_files
from interlayer import cache
from interlayer.errors import InterlayerError
from interlayer.store.shards import read_shard, shard_layout, write_shard_file
from interlayer.store.writer import ShardWriteError, ShardWriter
from tests.tiny_models import make_tiny

ROOT = Path(__file__).resolve().parents[3]
DOCS = [[4 + (7 * j + i) % 60 for i in range(5 + j % 9)] for j in range(120)]
SITES = ["resid_post.1", "mlp_out.0"]
# Each shard holds 2 batches of 4 contexts x 7 tokens (BOS excluded) at 2 sites: 300 tokens are 6 shards.
OPTS = dict(context_length=8, batch_size=4, memory_mb=2 * 28 * (2 * 32 * 4 + 32) / 2**20, progress=False)


@pytest.fixture
def model():
    return interlayer.load_model(make_tiny("llama"))


@pytest.fixture
def no_thread_tracebacks(monkeypatch):
    """Fail if any exception escapes a thread (it must reach the calling thread instead)."""
    escaped = []
    monkeypatch.setattr(threading, "excepthook", lambda args: escaped.append(args.exc_value))
    yield
    assert not escaped, escaped
    assert not [t for t in threading.enumerate() if t.name == "interlayer-shard-writer"], "the writer thread outlived the call"


def listing(path):
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return [(s["file"], s["sha256"], s["rows"], s["contexts"]) for s in manifest["shards"]]


def files(path):
    return sorted(p.name for p in Path(path).iterdir())


def assert_same_cache(a, b):
    assert listing(a) == listing(b) and files(a) == files(b)
    for name in files(a):
        if name != "manifest.json":
            assert (Path(a) / name).read_bytes() == (Path(b) / name).read_bytes(), name
    one, two = interlayer.ActivationStore(a), interlayer.ActivationStore(b)
    for site in SITES:
        assert torch.equal(one.load(site), two.load(site))


def full_disk_in_the_shard_write(monkeypatch, at):
    """The shard write itself raises a bare OSError (ENOSPC) at shard ``at``."""
    real = cache_files.write_shard_file

    def write(path, layout):
        if Path(path).name == f"shard_{at:05d}.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, layout)

    monkeypatch.setattr(cache_files, "write_shard_file", write)


def full_disk_in_rename(monkeypatch, at):
    """The atomic write's rename fails (ENOSPC) at shard ``at``, after its .part is written."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == f"shard_{at:05d}.safetensors":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("write_queue", [0, 2])
@pytest.mark.parametrize("inject", [full_disk_in_the_shard_write, full_disk_in_rename])
def test_a_full_disk_at_shard_3_loses_nothing_and_a_rerun_resumes_exactly(model, tmp_path, monkeypatch,
                                                                         no_thread_tracebacks, inject, write_queue):
    cache(model, DOCS, SITES, tmp_path / "clean", tokens=300, **OPTS)
    with monkeypatch.context() as patch:
        inject(patch, at=3)
        with pytest.raises(InterlayerError) as err:
            cache(model, DOCS, SITES, tmp_path / "cut", tokens=300, write_queue=write_queue, **OPTS)
    message = str(err.value)
    assert "shard_00003.safetensors" in message and "No space left on device" in message and "resumes" in message
    if inject is full_disk_in_the_shard_write:
        assert isinstance(err.value, ShardWriteError) and "shard 3" in message and "OSError" in message
    assert [row[0] for row in listing(tmp_path / "cut")] == [f"shard_{i:05d}.safetensors" for i in range(3)]
    assert listing(tmp_path / "cut") == listing(tmp_path / "clean")[:3]  # acknowledged = listed, and kept
    assert files(tmp_path / "cut") == ["manifest.json"] + [f"shard_{i:05d}.safetensors" for i in range(3)]
    assert not json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"]
    cache(model, DOCS, SITES, tmp_path / "cut", tokens=300, write_queue=write_queue, **OPTS)
    assert_same_cache(tmp_path / "cut", tmp_path / "clean")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_streamed_shard_file_is_safetensors_save_byte_for_byte(tmp_path, dtype):
    torch.manual_seed(0)
    tensors = {"resid_post.1": torch.randn(37, 5).to(dtype), "mlp_out.0": torch.randn(37, 5).to(dtype),
               "meta.sequence": torch.arange(37), "meta.position": torch.arange(37) % 7, "empty": torch.zeros(0, 5)}
    for metadata in ({"shard": "12"}, None):
        layout = shard_layout(tensors, metadata)
        sha = write_shard_file(tmp_path / "s.safetensors", layout)
        expected = save(tensors, metadata=metadata)
        assert (tmp_path / "s.safetensors").read_bytes() == expected and layout.nbytes == len(expected)
        assert sha == hashlib.sha256(expected).hexdigest()
        back = read_shard(tmp_path / "s.safetensors", sha)
        assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert files(tmp_path) == ["s.safetensors"]


def test_the_next_chunk_is_computed_while_a_shard_is_written(model, tmp_path, monkeypatch):
    """Shard 0's write waits until the model has produced chunk 1: only a writer thread
    can let it (written on the calling thread, chunk 1 never comes while shard 0 waits)."""
    produced = [threading.Event() for _ in range(8)]
    seen = {}
    real_chunks, real_write = cache_module.cache_chunks, cache_files.write_shard_file

    def chunks(*args, **kwargs):
        for number, acts in enumerate(real_chunks(*args, **kwargs)):
            produced[number].set()
            yield acts

    def write(path, layout):
        if Path(path).name == "shard_00000.safetensors":
            seen[len(seen)] = produced[1].wait(timeout=20 if not seen else 0.5)
        return real_write(path, layout)

    monkeypatch.setattr(cache_module, "cache_chunks", chunks)
    monkeypatch.setattr(cache_files, "write_shard_file", write)
    cache(model, DOCS, SITES, tmp_path / "threaded", tokens=300, **OPTS)
    for event in produced:
        event.clear()
    cache(model, DOCS, SITES, tmp_path / "sync", tokens=300, write_queue=0, **OPTS)
    assert seen == {0: True, 1: False}
    assert listing(tmp_path / "threaded") == listing(tmp_path / "sync")


@pytest.mark.parametrize("write_queue", [0, 1, 2])
def test_at_most_write_queue_chunks_wait_for_the_writer(model, tmp_path, monkeypatch, write_queue):
    """With slow writes the queue fills: when the model yields a chunk, at most
    ``write_queue`` earlier ones are not yet written (``write_queue + 1`` alive in all)."""
    alive, written = [], []
    real_chunks, real_write = cache_module.cache_chunks, cache_files.write_shard_file

    def chunks(*args, **kwargs):
        for number, acts in enumerate(real_chunks(*args, **kwargs)):
            alive.append(number + 1 - len(written))
            yield acts

    def write(path, layout):
        time.sleep(0.1)
        sha = real_write(path, layout)
        written.append(path)
        return sha

    monkeypatch.setattr(cache_module, "cache_chunks", chunks)
    monkeypatch.setattr(cache_files, "write_shard_file", write)
    cache(model, DOCS, SITES, tmp_path / "c", tokens=300, write_queue=write_queue, **OPTS)
    assert len(alive) == 6 and max(alive) == write_queue + 1


def test_an_interrupt_on_the_calling_thread_cancels_the_jobs_not_started(no_thread_tracebacks):
    started, gate = [], threading.Event()
    writer = ShardWriter(2, "a test")
    with pytest.raises(KeyboardInterrupt):
        with writer:
            writer.submit("job 0", lambda: (started.append(0), gate.wait(10)))
            writer.submit("job 1", lambda: started.append(1))
            threading.Timer(0.3, gate.set).start()  # job 0 ends after the cancel
            raise KeyboardInterrupt
    assert started == [0]
    with pytest.raises(InterlayerError, match="write_queue must be at least 0"):
        ShardWriter(-1, "a test")


def test_an_error_of_the_writer_names_the_shard_and_the_cause(no_thread_tracebacks):
    writer = ShardWriter(1, "the cache /x")
    writer.submit("shard 3 (shard_00003.safetensors)", lambda: 1 / 0)
    with pytest.raises(ShardWriteError, match=r"writing shard 3 \(shard_00003.safetensors\) of the cache /x failed: "
                                              "ZeroDivisionError: division by zero; the shards listed"):
        writer.close()
    ran = []
    writer = ShardWriter(1, "the cache /x")
    writer.submit("shard 0", lambda: 1 / 0)
    time.sleep(0.2)
    with pytest.raises(ShardWriteError, match="shard 0"):  # raised at the next submit, which does not run
        writer.submit("shard 1", lambda: ran.append(1))
    writer.cancel()
    assert not ran


@pytest.mark.slow
def test_a_writer_killed_mid_shard_loses_nothing_listed_and_resumes_exactly(model, tmp_path):
    """SIGKILL while the writer thread is halfway through shard 3's file: the manifest
    lists shards 0-2, the rerun removes the debris and ends with a clean run's shards."""
    ckpt = tmp_path / "ckpt"
    model.model.save_pretrained(ckpt)
    (tmp_path / "docs.json").write_text(json.dumps(DOCS))
    script = f"""
import json, os, sys, time, interlayer
import interlayer.store.cache_files as cache_files
from interlayer.io.files import temporary_file
real = cache_files.write_shard_file
def stalled(path, layout):
    if sys.argv[1] == "stall" and path.name == "shard_00003.safetensors":
        descriptor, _ = temporary_file(path)
        os.write(descriptor, layout.header)
        os.fsync(descriptor)
        time.sleep(600)
    return real(path, layout)
cache_files.write_shard_file = stalled
model = interlayer.load_model({str(ckpt)!r})
docs = json.load(open({str(tmp_path / 'docs.json')!r}))
interlayer.cache(model, docs, {SITES!r}, sys.argv[2], tokens=300, context_length=8, batch_size=4,
                 memory_mb={OPTS['memory_mb']!r}, progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-c", script]
    subprocess.run([*run, "run", str(tmp_path / "clean")], check=True, env=env)
    proc = subprocess.Popen([*run, "stall", str(tmp_path / "cut")], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("cut/shard_00003.safetensors.*.part")):
        assert proc.poll() is None, "the run ended before it stalled"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [row[0] for row in listing(tmp_path / "cut")] == [f"shard_{i:05d}.safetensors" for i in range(3)]
    assert listing(tmp_path / "cut") == listing(tmp_path / "clean")[:3]
    assert any(name.endswith(".part") for name in files(tmp_path / "cut"))  # the half-written shard, unlisted
    subprocess.run([*run, "run", str(tmp_path / "cut")], check=True, env=env)
    assert_same_cache(tmp_path / "cut", tmp_path / "clean")
