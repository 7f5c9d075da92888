"""Tuned lens: identity at initialisation, training, resume, save/load, CLI."""

import random

import pytest
import torch

import interlayer
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.lens import TunedLens, compare_lenses, train_tuned_lens
from interlayer.lens import tuning
from interlayer import collect
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def model(tmp_path):
    return interlayer.load_model(make_tiny("gemma2"), tokenizer=make_tokenizer(tmp_path / "tok"))


@pytest.fixture
def text(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "text.txt"
    path.write_text("\n".join(" ".join(f"w{rng.randint(4, 63)}" for _ in range(30)) for _ in range(120)))
    return str(path)


def hidden_of(model, text, contexts=40):
    acts = collect(model, text, "resid_post.*", context_length=32, limit=contexts, progress=False)
    return acts, tuning.stacked_resid(acts, model.n_layers)


def test_untrained_tuned_lens_equals_logit_lens_exactly(model, text):
    _, hidden = hidden_of(model, text, 4)
    lens = TunedLens.for_model(model)
    layers = list(range(model.n_layers))
    plain = LayerDecoder(model).decode(hidden, top_k=3, entropy=True, reference=hidden[-1])
    tuned = LayerDecoder(model, lens=lens).decode(hidden, top_k=3, entropy=True, reference=hidden[-1], layers=layers)
    assert torch.equal(plain.top_ids, tuned.top_ids)
    assert torch.equal(plain.entropy, tuned.entropy) and torch.equal(plain.kl_to_final, tuned.kl_to_final)


def test_training_beats_the_logit_lens_on_held_out_tokens(model, text):
    acts, hidden = hidden_of(model, text, 60)
    train = hidden[:, : acts.meta["sequence"].lt(45).sum()]
    held_out = acts.rows(acts.meta["sequence"] >= 45)
    lens = train_tuned_lens(model, train, steps=120, batch_size=64, lr=1e-2, warmup=5, progress=False)
    frame = compare_lenses(model, lens, held_out).to_frame()
    trained = frame[frame.layer < model.n_layers - 1]
    assert (trained.kl_tuned < trained.kl_logit).all(), frame
    assert frame.iloc[-1].kl_logit == frame.iloc[-1].kl_tuned == 0  # the last layer is the model itself


def test_interrupted_training_resumes_to_identical_weights(model, text, tmp_path, monkeypatch):
    _, hidden = hidden_of(model, text, 20)
    options = dict(steps=30, batch_size=32, lr=1e-2, warmup=4, checkpoint_every=10, progress=False)
    straight = train_tuned_lens(model, hidden, **options)
    real = tuning._row_order

    def crash_at_25(n, step, batch_size, seed):
        if step == 25:
            raise KeyboardInterrupt
        return real(n, step, batch_size, seed)

    monkeypatch.setattr(tuning, "_row_order", crash_at_25)
    with pytest.raises(KeyboardInterrupt):
        train_tuned_lens(model, hidden, checkpoint_dir=tmp_path / "ckpt", **options)
    monkeypatch.setattr(tuning, "_row_order", real)
    assert (tmp_path / "ckpt" / "state.json").is_file()
    resumed = train_tuned_lens(model, hidden, checkpoint_dir=tmp_path / "ckpt", **options)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(InterlayerError, match="other options"):
        train_tuned_lens(model, hidden, checkpoint_dir=tmp_path / "ckpt", **{**options, "lr": 5e-3})


def test_save_and_load_round_trip(model, text, tmp_path):
    _, hidden = hidden_of(model, text, 10)
    lens = train_tuned_lens(model, hidden, layers=[0], steps=5, batch_size=16, progress=False)
    lens.save(tmp_path / "lens")
    loaded = TunedLens.load(tmp_path / "lens", model)
    assert loaded.layers == [0]
    for (name, a), (_, b) in zip(lens.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert not (tmp_path / "lens" / "lens.safetensors.part").exists()
    other = interlayer.load_model(make_tiny("gemma2", seed=3))
    with pytest.raises(InterlayerError, match="other weights"):
        TunedLens.load(tmp_path / "lens", other)
    with pytest.raises(InterlayerError, match="not a saved tuned lens"):
        TunedLens.load(tmp_path)
    with pytest.raises(InterlayerError, match="valid layers are 0..1"):
        TunedLens.for_model(model, layers=[2])


def test_load_lens_is_the_tuned_lens_of_a_path_else_the_logit_lens(model, tmp_path):
    from interlayer.lens import LogitLens, check_lens_dir, load_lens

    assert isinstance(load_lens(None, model), LogitLens) and isinstance(load_lens("", model), LogitLens)
    TunedLens.for_model(model, layers=[1]).save(tmp_path / "lens")
    loaded = load_lens(str(tmp_path / "lens"), model)
    assert isinstance(loaded, TunedLens) and loaded.layers == [1]
    check_lens_dir(None)
    check_lens_dir(tmp_path / "lens")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "lens.safetensors").write_bytes((tmp_path / "lens" / "lens.safetensors").read_bytes())
    for bad in (tmp_path, tmp_path / "half", tmp_path / "absent"):
        with pytest.raises(InterlayerError, match="--tuned-lens .* is not a saved tuned lens"):
            check_lens_dir(bad)
        with pytest.raises(InterlayerError, match="is not a saved tuned lens"):
            load_lens(str(bad), model)


def test_lens_needs_layers_to_decode(model):
    lens = TunedLens.for_model(model)
    with pytest.raises(ValueError, match="layers="):
        LayerDecoder(model, lens=lens).decode(torch.randn(2, 3, model.d_model))


def test_tune_cli(tmp_path, text, capsys):
    from interlayer.cli import dispatch as cli

    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    code = cli.main(["lens", "tune", "--model", str(tmp_path / "ckpt"), "--data", text, "--out", str(tmp_path / "lens"),
                     "--tokens", "600", "--eval-tokens", "200", "--steps", "40", "--tokens-per-step", "32", "--layers", "0-1", "--lr", "0.01",
                     "--context-length", "32", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "kl_tuned" in out
    lens = TunedLens.load(tmp_path / "lens")
    assert lens.layers == [0, 1] and "held_out" in lens.training_log
    assert not (tmp_path / "lens" / "checkpoint").exists()
    assert cli.main(["lens", "tune", "--model", str(tmp_path / "ckpt")]) == 2


def test_tune_lens_refuses_a_command_config_by_name(tmp_path):
    from interlayer.errors import InterlayerError
    from interlayer.lens import TuneConfig, tune_lens

    model = interlayer.load_model(make_tiny("llama"))
    with pytest.raises(InterlayerError, match=r"tune_lens takes \(model, data, TuneOptions"):
        tune_lens(model, TuneConfig(out=str(tmp_path / "lens")))
