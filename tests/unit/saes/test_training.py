"""The SAE trainer: learning, exact resume from every source, and its refusals."""

import pytest
import torch

import interlayer
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.sources import CachedSource, StreamedSource, TensorSource
from interlayer.saes.training import (CHECKPOINT, CheckpointMismatchError, NonFiniteError, TrainOptions,
                                      _postfix, lr_factor, train_sae)
from interlayer import cache
from tests.tiny_models import make_tiny, make_tokenizer

DOCS = [[4 + (7 * j + i) % 60 for i in range(5 + j % 9)] for j in range(300)]


def synthetic(rows=6000, d=16, features=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.nn.functional.normalize(torch.randn(features, d, generator=gen), dim=-1)
    codes = torch.relu(torch.randn(rows, features, generator=gen) - 1.5) * 3
    return codes @ dictionary + 0.3


def opts(**kw):
    base = dict(tokens=128 * 60, batch_size=128, lr=3e-3, warmup_steps=5, progress=False, checkpoint_every=0,
                log_every=5)
    base.update(kw)
    return TrainOptions(**base)


@pytest.mark.parametrize("arch,k", [("relu", None), ("topk", 4), ("batchtopk", 4), ("jumprelu", None), ("topafa", None)])
def test_every_architecture_learns(arch, k):
    x = synthetic()
    cfg = SAEConfig(d_in=16, d_sae=64, arch=arch, k=k)
    untrained = SAE(cfg)
    variance = (x - x.mean(0)).square().sum()
    before = ((untrained(x).x_hat - x).square().sum() / variance).item()
    result = train_sae(TensorSource(x, 128), cfg, opts())
    sae = result.sae
    after = ((sae(x).x_hat - x).square().sum() / variance).item()  # fraction of variance unexplained
    assert after < 0.35 and after < 0.6 * before, (before, after)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)
    frame = result.to_frame()
    assert {"tokens_per_s", "nmse", "l0", "dead_frac", "loss", "lr"} <= set(frame.columns)
    assert frame.step.tolist() == list(range(5, 61, 5))
    assert 0 <= result.dead_frac_window < 1 and result.window_tokens == 60 * 128


def test_learning_rate_schedule():
    factors = [lr_factor(s, 100, 10, 0.2) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0 and factors[50] == 1.0
    assert factors[80] == 1.0 and factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)


def _interrupted_then_resumed(source_factory, cfg, options, tmp_path, stop_at):
    class Stop(Exception):
        pass

    def stop(step):
        if step == stop_at:
            raise Stop

    with pytest.raises(Stop):
        train_sae(source_factory(), cfg, options, checkpoint_dir=tmp_path / "cut", on_step=stop)
    assert (tmp_path / "cut" / CHECKPOINT).is_file()
    resumed = train_sae(source_factory(), cfg, options, checkpoint_dir=tmp_path / "cut")
    assert resumed.resumed_from > 0
    return resumed


def _assert_same_weights(a, b):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("arch,k", [("topafa", None), ("batchtopk", 4), ("jumprelu", None)])
def test_tensor_source_resumes_exactly(tmp_path, arch, k):
    x = synthetic()
    cfg = SAEConfig(d_in=16, d_sae=64, arch=arch, k=k, normalization="mean_norm")
    options = opts(tokens=128 * 40, checkpoint_every=7, dead_after=2)
    full = train_sae(TensorSource(x, 128), cfg, options)
    resumed = _interrupted_then_resumed(lambda: TensorSource(x, 128), cfg, options, tmp_path, stop_at=17)
    assert resumed.resumed_from == 14
    _assert_same_weights(full.sae, resumed.sae)
    assert resumed.dead_frac_window == full.dead_frac_window
    assert resumed.sae.cfg.scale == full.sae.cfg.scale != 1.0


@pytest.fixture
def tiny_model():
    return interlayer.load_model(make_tiny("llama"))


def test_cached_source_resumes_exactly_across_epochs(tmp_path, tiny_model):
    store = cache(tiny_model, DOCS, "resid_post.1", tmp_path / "acts", tokens=900, context_length=8, batch_size=4,
                  memory_mb=0.02, progress=False)
    assert store.n_shards > 2
    cfg = SAEConfig(d_in=32, d_sae=64, arch="topk", k=4)
    options = opts(tokens=64 * 40, batch_size=64, checkpoint_every=5)  # 40 steps > one epoch of 14
    full = train_sae(CachedSource(store, "resid_post.1", 64), cfg, options)
    resumed = _interrupted_then_resumed(lambda: CachedSource(store, "resid_post.1", 64), cfg, options, tmp_path, 23)
    _assert_same_weights(full.sae, resumed.sae)


def test_streamed_source_resumes_exactly(tmp_path):
    model = interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path / "tok"))
    text = tmp_path / "t.txt"
    text.write_text("\n".join(" ".join(f"w{4 + (3 * j + i) % 60}" for i in range(4 + j % 11)) for j in range(200)))

    def source():
        return StreamedSource(model, str(text), "resid_post.0", 32, context_length=8, forward_batch_size=4,
                              memory_mb=0.03)

    chunks = list(source()._chunks(0))
    assert len(chunks) > 3
    cfg = SAEConfig(d_in=32, d_sae=64, arch="topafa")
    options = opts(tokens=32 * 60, batch_size=32, checkpoint_every=6)
    full = train_sae(source(), cfg, options)
    resumed = _interrupted_then_resumed(source, cfg, options, tmp_path, stop_at=40)
    _assert_same_weights(full.sae, resumed.sae)


def test_nan_activations_stop_training_naming_step_and_shard(tmp_path):
    hf = make_tiny("llama")
    with torch.no_grad():
        hf.model.embed_tokens.weight[57] = float("nan")  # one token poisons its context's activations
    model = interlayer.load_model(hf)
    docs = [[4 + (5 * j + i) % 50 for i in range(6)] for j in range(200)]
    docs[150] = [57] * 6
    store = cache(model, docs, "resid_post.0", tmp_path / "acts", tokens=1200, context_length=8, batch_size=4,
                  memory_mb=0.02, progress=False)
    rows = store.load("resid_post.0")
    assert torch.isnan(rows).any()
    cfg = SAEConfig(d_in=32, d_sae=64, arch="topk", k=4)
    options = opts(tokens=32 * 200, batch_size=32, checkpoint_every=3, init_batches=1)
    with pytest.raises(NonFiniteError, match=r"NaN or inf in the activations at step (\d+): row \d+ of shard "
                                             r"shard_000\d\d\.safetensors in .*last good checkpoint") as info:
        train_sae(CachedSource(store, "resid_post.0", 32, seed=3), cfg, options, checkpoint_dir=tmp_path / "run")
    step = int(info.value.args[0].split("at step ")[1].split(":")[0])
    from safetensors import safe_open
    import json

    with safe_open(str(tmp_path / "run" / CHECKPOINT), "pt") as handle:
        saved = json.loads(handle.metadata()["state"])["step"]
    assert saved == step - step % 3 and saved > 0
    # the named row of the named shard holds the bad value
    message = info.value.args[0]
    row = int(message.split(": row ")[1].split()[0])
    name = message.split(" of shard ")[1].split()[0]
    index = [s["file"] for s in store.manifest["shards"]].index(name)
    assert torch.isnan(store.shard(index)["resid_post.0"][row]).any()


def test_checkpoint_of_another_architecture_or_config_is_refused(tmp_path):
    x = synthetic()
    options = opts(tokens=128 * 10, checkpoint_every=5)
    train_sae(TensorSource(x, 128), SAEConfig(d_in=16, d_sae=64, arch="topk", k=4), options, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="sae.arch: 'topk' in the checkpoint, 'topafa' now"):
        train_sae(TensorSource(x, 128), SAEConfig(d_in=16, d_sae=64, arch="topafa"), options, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="options.lr"):
        train_sae(TensorSource(x, 128), SAEConfig(d_in=16, d_sae=64, arch="topk", k=4), opts(tokens=128 * 10, lr=1e-2),
                  checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatchError, match="source.rows_sha256"):
        train_sae(TensorSource(x * 2, 128), SAEConfig(d_in=16, d_sae=64, arch="topk", k=4), options,
                  checkpoint_dir=tmp_path)


def test_d_in_mismatch_between_sae_and_source_is_refused():
    with pytest.raises(interlayer.InterlayerError, match="d_in=32 but the source's site tensor has width 16"):
        train_sae(TensorSource(synthetic(), 128), SAEConfig(d_in=32, d_sae=64, arch="topk", k=4), opts())


def test_b_dec_starts_at_the_mean_or_at_zero():
    topk, authors = SAEConfig(d_in=4, d_sae=8, arch="topk", k=2), SAEConfig(d_in=4, d_sae=8, arch="topafa", afa_form="authors")
    assert TrainOptions().b_dec_start(authors) == "zeros" and TrainOptions().b_dec_start(topk) == "mean"
    assert TrainOptions().b_dec_start(SAEConfig(d_in=4, d_sae=8, arch="topafa")) == "mean"  # the centred form
    assert TrainOptions(b_dec_init="zeros").b_dec_start(topk) == "zeros"
    x = synthetic()
    cfg = SAEConfig(d_in=16, d_sae=64, arch="topk", k=4, normalization="none")
    options = opts(tokens=128, lr=1e-12, warmup_steps=0, init_batches=2)  # one step that barely moves b_dec
    first_rows = torch.cat([b.x for b, _ in zip(TensorSource(x, 128).batches(), range(2))])
    sae = train_sae(TensorSource(x, 128), cfg, options).sae
    torch.testing.assert_close(sae.b_dec.detach(), first_rows.mean(0), atol=1e-6, rtol=0)
    sae = train_sae(TensorSource(x, 128), cfg, opts(tokens=128, lr=1e-12, warmup_steps=0, b_dec_init="zeros")).sae
    assert sae.b_dec.abs().max() < 1e-6


def test_progress_bar_shows_every_member_not_the_last():
    rows = [{"tokens_per_s": 150.0, "nmse": 0.0058, "l0": 128.0, "dead_frac": 0.0},
            {"tokens_per_s": 151.0, "nmse": 0.0437, "l0": 3.1, "dead_frac": 0.358},
            {"tokens_per_s": 149.0, "nmse": 0.0104, "l0": 464.9, "dead_frac": 0.0}]
    assert _postfix(rows) == {"members": "3", "tok_s": "150", "nmse": "0.006-0.044", "l0": "3.1-464.9",
                              "dead": "max 35.8%"}
    assert _postfix(rows[1:2]) == {"tok_s": "151", "nmse": "0.044", "l0": "3.1", "dead": "35.8%"}
