"""On-disk shards: resume, checksums, disk budget, manifests and training batches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import interlayer
from interlayer.errors import CacheCorruptError, InterlayerError, UnknownSiteError
from interlayer.io.files import WriteError
from interlayer.store.shards import DiskBudgetError
from interlayer import ActivationStore, cache, collect
from tests.tiny_models import make_tiny

ROOT = Path(__file__).resolve().parents[3]
DOCS = [[4 + (7 * j + i) % 60 for i in range(5 + j % 9)] for j in range(120)]
SITES = ["resid_post.1", "mlp_out.0"]
# Each shard holds 2 batches of 4 contexts x 7 tokens (BOS excluded) at 2 sites.
OPTS = dict(context_length=8, batch_size=4, memory_mb=2 * 28 * (2 * 32 * 4 + 32) / 2**20, progress=False)


@pytest.fixture
def model():
    return interlayer.load_model(make_tiny("llama"))


def shard_hashes(path):
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return [(s["file"], s["sha256"], s["rows"]) for s in manifest["shards"]]


def test_cache_equals_collect_and_records_a_manifest(model, tmp_path):
    store = cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    manifest = store.manifest
    assert manifest["complete"] and manifest["n_rows"] == 300 and store.n_rows == 300
    assert [s["rows"] for s in manifest["shards"]] == [56, 56, 56, 56, 56, 20]
    assert manifest["weights_sha256"] == model.weights_sha256() and manifest["dtype"] == "float32"
    assert manifest["sites"] == ["mlp_out.0", "resid_post.1"] and manifest["select"] == "tokens"
    ref = collect(model, DOCS, SITES, context_length=8, batch_size=4, progress=False)
    for site in SITES:
        torch.testing.assert_close(store.load(site), ref[site][:300], atol=0, rtol=0)
    assert store.to_frame().token_id.tolist() == ref.to_frame().token_id[:300].tolist()


def test_bf16_storage_round_trips(model, tmp_path):
    store = cache(model, DOCS, SITES, tmp_path / "c", tokens=100, storage_dtype="bfloat16", **OPTS)
    ref = collect(model, DOCS, SITES, context_length=8, batch_size=4, storage_dtype="bfloat16", progress=False)
    assert store.load("resid_post.1").dtype == torch.bfloat16 and store.manifest["dtype"] == "bfloat16"
    assert torch.equal(store.load("resid_post.1"), ref["resid_post.1"][:100])
    with pytest.warns(DeprecationWarning, match="storage_dtype"):  # the old keyword, for one release
        old = cache(model, DOCS, SITES, tmp_path / "d", tokens=100, dtype="bfloat16", **OPTS)
    assert torch.equal(old.load("resid_post.1"), store.load("resid_post.1"))


@pytest.mark.parametrize("data, sites, says", [
    (["a", None], SITES, "input 1 is None .NoneType.; each input must be a string or a list of token ids"),
    (None, SITES, "inputs is None"),
    ({"a": 1}, SITES, "inputs is a dict"),
    (DOCS, 3, "sites is 3 .int.; give a site name such as 'resid_post.6', a wildcard"),
])
def test_wrong_types_are_one_line_errors_before_any_pass(model, tmp_path, monkeypatch, data, sites, says):
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(InterlayerError, match=says) as err:
        cache(model, data, sites, tmp_path / "c", tokens=100, **OPTS)
    assert "\n" not in str(err.value) and not (tmp_path / "c").exists()


def test_interrupted_run_resumes_to_identical_shards(model, tmp_path):
    full = cache(model, DOCS, SITES, tmp_path / "full", tokens=300, **OPTS)

    def crash_after_two(index):
        if index == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache(model, DOCS, SITES, tmp_path / "cut", tokens=300, on_shard=crash_after_two, **OPTS)
    assert len(shard_hashes(tmp_path / "cut")) == 3
    (tmp_path / "cut" / "shard_00003.safetensors.part").write_bytes(b"half a shard")  # debris of a kill
    resumed = cache(model, DOCS, SITES, tmp_path / "cut", tokens=300, **OPTS)
    assert shard_hashes(tmp_path / "cut") == shard_hashes(tmp_path / "full")
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == sorted(p.name for p in (tmp_path / "full").iterdir())
    assert resumed.n_rows == full.n_rows


@pytest.mark.slow
def test_killed_process_resumes_to_identical_shards(model, tmp_path):
    ckpt = tmp_path / "ckpt"
    model.model.save_pretrained(ckpt)
    (tmp_path / "docs.json").write_text(json.dumps(DOCS * 4))
    script = f"""
import json, time, interlayer
from interlayer import cache
model = interlayer.load_model({str(ckpt)!r})
docs = json.load(open({str(tmp_path / 'docs.json')!r}))
slow = lambda index: time.sleep(0.3)
cache(model, docs, {SITES!r}, {{out!r}}, tokens=1100, on_shard=slow, context_length=8, batch_size=4,
      memory_mb={OPTS['memory_mb']!r}, progress=False)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", script.format(out=str(tmp_path / "full"))], check=True, env=env)
    proc = subprocess.Popen([sys.executable, "-c", script.format(out=str(tmp_path / "cut"))], env=env)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(shard_hashes(tmp_path / "cut")) >= 3:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(shard_hashes(tmp_path / "cut"))
    assert 3 <= done < len(shard_hashes(tmp_path / "full"))
    subprocess.run([sys.executable, "-c", script.format(out=str(tmp_path / "cut"))], check=True, env=env)
    assert shard_hashes(tmp_path / "cut") == shard_hashes(tmp_path / "full")
    assert json.loads((tmp_path / "cut" / "manifest.json").read_text())["complete"]


def test_corrupt_shard_is_named(model, tmp_path):
    cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    victim = tmp_path / "c" / "shard_00002.safetensors"
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x01
    victim.write_bytes(bytes(data))
    store = ActivationStore(tmp_path / "c")
    store.shard(1)
    with pytest.raises(CacheCorruptError, match="shard_00002.safetensors"):
        store.shard(2)
    with pytest.raises(CacheCorruptError, match="shard_00002.safetensors"):
        store.load("resid_post.1")


def test_corrupt_shard_is_caught_on_resume(model, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        cache(model, DOCS, SITES, tmp_path / "c", tokens=300,
              on_shard=lambda i: (_ for _ in ()).throw(KeyboardInterrupt) if i == 1 else None, **OPTS)
    (tmp_path / "c" / "shard_00000.safetensors").write_bytes(b"garbage")
    with pytest.raises(CacheCorruptError, match="shard_00000.safetensors"):
        cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)


def test_disk_budget_stops_cleanly_and_resumes(model, tmp_path):
    shard_bytes = 56 * (2 * 32 * 4) + 56 * 4 * 8  # tensors + four int64 meta columns, roughly
    with pytest.raises(DiskBudgetError, match="disk budget of") as info:
        cache(model, DOCS, SITES, tmp_path / "c", tokens=300, disk_budget_mb=2.5 * shard_bytes / 2**20, **OPTS)
    assert "resumes" in str(info.value)
    names = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert names == ["manifest.json", "shard_00000.safetensors", "shard_00001.safetensors"]  # no partial shard
    cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    full = cache(model, DOCS, SITES, tmp_path / "full", tokens=300, **OPTS)
    assert shard_hashes(tmp_path / "c") == shard_hashes(tmp_path / "full")
    assert full.n_rows == 300


def test_failed_write_leaves_no_partial_shard(model, tmp_path, monkeypatch):
    import interlayer.io.files as shards

    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards.os, "fsync", full_disk)
    with pytest.raises(WriteError, match="No space left"):
        cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    monkeypatch.setattr(shards.os, "fsync", real_fsync)
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith("shard_")]


def test_manifest_for_another_model_or_options_is_refused(model, tmp_path):
    cache(model, DOCS, SITES, tmp_path / "c", tokens=100, **OPTS)
    other = interlayer.load_model(make_tiny("llama", seed=1))
    with pytest.raises(InterlayerError, match="was written for model"):
        cache(other, DOCS, SITES, tmp_path / "c", tokens=100, **OPTS)
    with pytest.raises(InterlayerError, match="was written for model"):
        ActivationStore(tmp_path / "c", model=other)
    with pytest.raises(InterlayerError, match="sites"):
        cache(model, DOCS, ["resid_post.2"], tmp_path / "c", tokens=100, **OPTS)
    with pytest.raises(InterlayerError, match="data_sha256"):
        cache(model, DOCS[1:], SITES, tmp_path / "c", tokens=100, **OPTS)


def test_shuffled_batches_are_seeded_and_mix_shards(model, tmp_path):
    store = cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    everything = store.load("resid_post.1")
    a = list(store.batches("resid_post.1", 32, seed=3))
    b = list(store.batches("resid_post.1", 32, seed=3))
    c = list(store.batches("resid_post.1", 32, seed=4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    seen = torch.cat(a)
    assert seen.shape == everything.shape
    # Every row exactly once per epoch: sort both by their first coordinate and compare.
    assert torch.equal(seen[seen[:, 0].argsort()], everything[everything[:, 0].argsort()])
    first = a[0]
    row_shard = [int(torch.nonzero((everything == r).all(1))[0]) // 56 for r in first]
    assert len(set(row_shard)) >= 3  # one batch draws on many shards
    resumed = list(store.batches("resid_post.1", 32, seed=3, start=4))
    assert all(torch.equal(x, y) for x, y in zip(resumed, a[4:]))
    with pytest.raises(UnknownSiteError, match="resid_post.1"):
        next(store.batches("resid_post.7", 4))


def test_rank_parts_of_each_batch_are_disjoint_and_cover_it(model, tmp_path):
    store = cache(model, DOCS, SITES, tmp_path / "c", tokens=300, **OPTS)
    whole = list(store.batches("resid_post.1", 32, seed=3, drop_last=True, with_index=True))
    parts = [list(store.batches("resid_post.1", 32, seed=3, drop_last=True, with_index=True, part=(r, 4)))
             for r in range(4)]
    for b, (x, index) in enumerate(whole):
        got = [parts[r][b] for r in range(4)]
        assert torch.equal(torch.cat([i for _, i in got]), index)  # disjoint, in order, the whole batch
        assert torch.equal(torch.cat([p for p, _ in got]), x)
    with pytest.raises(InterlayerError, match="does not split into 3 equal parts"):
        next(store.batches("resid_post.1", 32, drop_last=True, part=(0, 3)))
    with pytest.raises(InterlayerError, match="needs drop_last=True"):
        next(store.batches("resid_post.1", 32, part=(0, 4)))


def test_unfinished_cache_cannot_be_opened(model, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        cache(model, DOCS, SITES, tmp_path / "c", tokens=300,
              on_shard=lambda i: (_ for _ in ()).throw(KeyboardInterrupt), **OPTS)
    with pytest.raises(InterlayerError, match="unfinished"):
        ActivationStore(tmp_path / "c")


def test_cache_cli(tmp_path, capsys):
    from interlayer.cli import dispatch as cli
    from tests.tiny_models import make_tokenizer

    make_tiny("gemma3").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    (tmp_path / "d.txt").write_text("\n".join(" ".join(f"w{4 + (i * j) % 60}" for i in range(9)) for j in range(50)))
    args = ["cache", "--model", str(tmp_path / "ckpt"), "--data", str(tmp_path / "d.txt"), "--sites",
            "resid_post.1,blocks.0.hook_attn_out", "--tokens", "200", "--out", str(tmp_path / "out"),
            "--context-length", "16", "--storage-dtype", "bfloat16", "--no-progress"]
    assert cli.main(args) == 0
    store = ActivationStore(tmp_path / "out")
    assert store.n_rows == 200 and store.sites == ["attn_out.0", "resid_post.1"]
    assert store.load("resid_post.1").dtype == torch.bfloat16
    assert cli.main(["cache", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_one_manifest_opener_and_an_explicit_world(model, tmp_path):
    """``world=`` places the run (one process here, as the ambient default); the
    single-process writer refuses, through the shared opener, a cache that several
    processes wrote; the old manifest readers' names still work."""
    from interlayer.distributed import SINGLE
    from interlayer.model import conversion_cache
    from interlayer.store import cache_files

    store = cache(model, DOCS, SITES, tmp_path / "c", tokens=100, world=SINGLE, **OPTS)
    ambient = cache(model, DOCS, SITES, tmp_path / "d", tokens=100, **OPTS)
    assert shard_hashes(store.path) == shard_hashes(ambient.path)
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    (tmp_path / "d" / "manifest.json").write_text(json.dumps({**manifest, "ranks": 2, "complete": False}))
    with pytest.raises(InterlayerError, match="written by 2 processes.*--nproc-per-node 2"):
        cache(model, DOCS, SITES, tmp_path / "d", tokens=100, **OPTS)
    with pytest.warns(DeprecationWarning, match="read_cache_manifest"):
        assert cache_files.read_manifest(store.path) == cache_files.read_cache_manifest(store.path)
    with pytest.warns(DeprecationWarning, match="read_entry_manifest"):
        with pytest.raises(CacheCorruptError, match="no readable manifest.json"):
            conversion_cache.read_manifest(tmp_path)
    assert cache_files.MANIFEST == conversion_cache.MANIFEST == "manifest.json"
