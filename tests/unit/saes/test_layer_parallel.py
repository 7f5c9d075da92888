"""Layer-parallel SAE training (``sae train --sites``): one model pass per batch for
every site, the same SAEs as training each site alone, and the same on 2 gloo
processes (streamed and scattered by rank 0, or read from a cache), with exact resume."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import interlayer
from interlayer.cli import dispatch as cli
from interlayer.model.adapter import ModelAdapter
from interlayer.saes import SAEConfig
from interlayer.saes.sources import StreamedSource
from interlayer.saes.training import TrainMember, TrainOptions, train_saes
from tests.distributed_launch import launch
from tests.tiny_models import tiny_checkpoint_and_text

SITES = ["resid_post.0", "mlp_out.1", "resid_post.2"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("lp")
    tiny_checkpoint_and_text(root, documents=300)
    code = cli.main([str(a) for a in ("cache", "--model", root / "ckpt", "--data", root / "t.txt", "--sites",
                                      ",".join(SITES), "--tokens", 2000, "--out", root / "acts", "--context-length", 16,
                                      "--no-progress")])
    assert code == 0
    return root


def _argv(root, out, *source):
    return ["sae", "train", "--model", root / "ckpt", *(source or ("--data", root / "t.txt")), "--sites",
            "resid_post.0,mlp_out.1,resid_post.2", "--out", out, "--arch", "topk", "--k", 4, "--latents", 48,
            "--tokens", 64 * 12, "--tokens-per-step", 64, "--lr", 3e-3, "--warmup-steps", 2, "--checkpoint-every", 4,
            "--context-length", 16, "--batch-size", 4, "--memory-mb", 0.2, "--eval-data", root / "t.txt",
            "--eval-tokens", 45, "--no-progress"]


def _weights(out):
    return {s: load_file(str(out / s / "sae.safetensors")) for s in SITES}


def test_one_pass_per_batch_for_every_site_equals_each_site_alone(root, monkeypatch):
    model = interlayer.load_model(str(root / "ckpt"))
    calls = [0]
    forward = ModelAdapter.forward

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(ModelAdapter, "forward", counting)
    options = TrainOptions(tokens=64 * 10, batch_size=64, lr=3e-3, warmup_steps=2, progress=False)

    def source(sites):  # one chunk holds all the text, so a chunk's rows are the same for any number of sites
        return StreamedSource(model, str(root / "t.txt"), sites, 64, context_length=16, forward_batch_size=4,
                              memory_mb=50)

    cfgs = [SAEConfig(d_in=32, d_sae=48, arch="topk", k=4, site=s) for s in SITES]
    together = train_saes(source(SITES), [TrainMember(c, options) for c in cfgs])
    passes_together, calls[0] = calls[0], 0
    alone = [train_saes(source(c.site), [TrainMember(c, options)])[0] for c in cfgs]
    assert passes_together * len(SITES) == calls[0]  # k sites: one pass per batch, not k
    for a, t in zip(alone, together):
        for name, value in a.sae.state_dict().items():
            assert torch.equal(t.sae.state_dict()[name], value), name


def test_two_ranks_streamed_and_cached_equal_one_process(root, tmp_path):
    assert cli.main([str(a) for a in _argv(root, tmp_path / "one")]) == 0
    one = _weights(tmp_path / "one")
    table = pd.read_csv(tmp_path / "one" / "sites.csv")
    assert list(table.site) == SITES and set(table["rank"]) == {0}
    ranks = launch(_argv(root, tmp_path / "two"))
    assert ranks.codes == [0, 0], ranks.err
    two = _weights(tmp_path / "two")
    table = pd.read_csv(tmp_path / "two" / "sites.csv")
    assert list(table.site) == SITES and list(table["rank"]) == [0, 1, 0]  # round-robin
    for site in SITES:
        for name in one[site]:
            torch.testing.assert_close(two[site][name], one[site][name], rtol=1e-4, atol=1e-5, msg=f"{site} {name}")
        m1, m2 = (json.loads((tmp_path / d / site / "metrics.json").read_text()) for d in ("one", "two"))
        assert m2["nmse"] == pytest.approx(m1["nmse"], rel=1e-3)
    assert not any((tmp_path / "two" / s / "checkpoint.safetensors").exists() for s in SITES)
    # from a cache, each rank reads its own sites
    cached = launch(_argv(root, tmp_path / "cached", "--activations", root / "acts"))
    assert cached.codes == [0, 0], cached.err
    assert cli.main([str(a) for a in _argv(root, tmp_path / "cached1", "--activations", root / "acts")]) == 0
    a, b = _weights(tmp_path / "cached"), _weights(tmp_path / "cached1")
    for site in SITES:
        for name in a[site]:
            assert torch.equal(a[site][name], b[site][name]), f"{site} {name}"


def test_killed_rank_resume_is_exact_and_bad_input(root, tmp_path):
    whole = launch(_argv(root, tmp_path / "whole"))
    assert whole.codes == [0, 0], whole.err
    killed = launch(_argv(root, tmp_path / "resumed"), die="1:6", timeout=120)
    assert killed.codes[1] == -9 and killed.codes[0] == 1 and "another rank stopped" in killed.err[0]
    again = launch(_argv(root, tmp_path / "resumed"))
    assert again.codes == [0, 0], again.err
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "resumed")
    for site in SITES:
        for name in a[site]:
            assert torch.equal(a[site][name], b[site][name]), f"{site} {name}"
    # a finished run is not overwritten
    assert launch(_argv(root, tmp_path / "resumed")).codes == [2, 2]
    # more ranks than sites
    four = launch(_argv(root, tmp_path / "four"), n=4)
    assert four.codes == [2, 2, 2, 2] and "3 site(s) for 4 ranks" in four.err[0]
