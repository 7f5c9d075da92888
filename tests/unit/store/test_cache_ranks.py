"""``interlayer cache`` on 2 gloo processes: one manifest over every rank's shards that
holds exactly the single-process cache's rows, a seeded split, exact resume after a rank
is killed, and the errors of distributed runs."""

import json
import subprocess
import sys

import pytest
import torch

from interlayer import ActivationStore, cli
from tests.distributed_launch import ROOT, launch
from tests.tiny_models import tiny_checkpoint_and_text

TOKENS = 1000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcache")
    tiny_checkpoint_and_text(root, documents=200)
    single = root / "single"
    assert cli.main([str(a) for a in _argv(root, single)]) == 0
    return root, ActivationStore(single)


def _argv(root, out, *extra):
    return ["cache", "--model", root / "ckpt", "--data", root / "t.txt", "--sites", "resid_post.0,resid_post.2",
            "--tokens", TOKENS, "--out", out, "--context-length", 16, "--batch-size", 4, "--memory-mb", 0.04,
            "--no-progress", *extra]


def _rows(store):
    """Every row as {(sequence, position): (token_id, activations)}, and the row count."""
    frame = store.to_frame()
    acts = torch.cat([store.load("resid_post.0"), store.load("resid_post.2")], dim=1)
    keys = list(zip(frame.sequence.tolist(), frame.position.tolist()))
    return {k: (t, a) for k, t, a in zip(keys, frame.token_id.tolist(), acts)}, len(keys)


def _same_rows(store, single):
    rows, n = _rows(store)
    expected, n_single = _rows(single)
    assert n == n_single == TOKENS and len(rows) == n  # every token once, none twice
    assert rows.keys() == expected.keys()
    for key, (token, acts) in expected.items():
        assert rows[key][0] == token
        torch.testing.assert_close(rows[key][1], acts, rtol=1e-5, atol=1e-6)


def test_two_ranks_write_one_cache_of_the_single_process_rows(setup, tmp_path):
    root, single = setup
    ranks = launch(_argv(root, tmp_path / "two"))
    assert ranks.codes == [0, 0], ranks.err
    assert "ActivationStore" in ranks.out[0] and ranks.out[1] == ""
    store = ActivationStore(tmp_path / "two")
    manifest = store.manifest
    assert manifest["ranks"] == 2 and manifest["complete"] and manifest["n_rows"] == TOKENS
    assert {s["file"][:10] for s in manifest["shards"]} == {"shard_r000", "shard_r001"}
    assert [p["rows"] for p in manifest["parts"]] and min(p["rows"] for p in manifest["parts"]) > TOKENS // 4
    _same_rows(store, single)
    # the seed fixes the split: the same seed, the same shards; another seed, another split
    again = launch(_argv(root, tmp_path / "again"))
    assert again.codes == [0, 0]
    assert [s["sha256"] for s in ActivationStore(tmp_path / "again").manifest["shards"]] == \
        [s["sha256"] for s in manifest["shards"]]
    other = launch(_argv(root, tmp_path / "other", "--seed", 1))
    assert other.codes == [0, 0]
    other_store = ActivationStore(tmp_path / "other")
    assert [s["sha256"] for s in other_store.manifest["shards"]] != [s["sha256"] for s in manifest["shards"]]
    _same_rows(other_store, single)


def test_a_killed_rank_resumes_without_losing_or_repeating_tokens(setup, tmp_path):
    root, single = setup
    out = tmp_path / "killed"
    ranks = launch(_argv(root, out), die="1:shard:2", timeout=120)
    assert ranks.codes[1] == -9 and ranks.codes[0] != 0
    assert "another rank stopped" in ranks.err[0] and "Traceback" not in ranks.err[0]
    part = json.loads((out / "part_001_of_002.json").read_text())
    assert len(part["shards"]) == 2 and not part["complete"]
    kept = {s["file"]: (out / s["file"]).stat().st_mtime_ns for s in part["shards"]}
    # the cache is not readable until it is complete
    with pytest.raises(Exception, match="unfinished cache"):
        ActivationStore(out)
    # another rank count is refused, on every rank
    three = launch(_argv(root, out), n=3)
    assert three.codes == [2, 2, 2] and all("ranks: 2 there, 3 now" in e for e in three.err)
    # a single process is refused too, and deletes nothing
    assert cli.main([str(a) for a in _argv(root, out)]) == 2
    again = launch(_argv(root, out))
    assert again.codes == [0, 0], again.err
    assert all((out / f).stat().st_mtime_ns == t for f, t in kept.items())  # the whole shards were kept
    _same_rows(ActivationStore(out), single)


def test_a_corrupt_shard_on_one_rank_is_named_on_every_rank(setup, tmp_path):
    root, _ = setup
    out = tmp_path / "corrupt"
    ranks = launch(_argv(root, out), die="1:shard:2", timeout=120)
    assert ranks.codes[1] == -9
    part = json.loads((out / "part_001_of_002.json").read_text())
    bad = out / part["shards"][0]["file"]
    data = bytearray(bad.read_bytes())
    data[-3] ^= 0xFF
    bad.write_bytes(bytes(data))
    again = launch(_argv(root, out))
    assert again.codes == [2, 2]
    assert all(part["shards"][0]["file"] in e and "corrupt" in e for e in again.err)


def test_ranks_with_disks_of_their_own(setup, tmp_path):
    """Each rank writes its shards where it sees --out; rank 0's manifest lists them all,
    and the cache reads back once the shards are copied together."""
    import shutil

    root, single = setup
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    ranks = launch(_argv(root, "acts"), cwds=nodes)
    assert ranks.codes == [0, 0], ranks.err
    assert not (nodes[1] / "acts" / "manifest.json").exists()
    theirs = sorted(p.name for p in (nodes[1] / "acts").glob("shard_r001_*.safetensors"))
    assert theirs and not list((nodes[0] / "acts").glob("shard_r001_*"))
    for name in theirs:
        shutil.copy(nodes[1] / "acts" / name, nodes[0] / "acts" / name)
    _same_rows(ActivationStore(nodes[0] / "acts"), single)


def test_torchrun_launches_the_cache(setup, tmp_path):
    root, single = setup
    out = tmp_path / "torchrun"
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    import os

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "interlayer", *map(str, _argv(root, out))], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    _same_rows(ActivationStore(out), single)
