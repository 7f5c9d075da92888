"""Jacobian lens: the fit against a direct autograd Jacobian and against TransformerLens 4,
resume, the readout, lens.pt, bad input, the lens comparison and the CLI."""

import random

import pytest
import torch

import interlayer
from interlayer import collect
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.lens import JacobianLens, JacobianOptions, LensComparison, compare_lenses, fit_jacobian_lens
from interlayer.lens import jacobian_fit
from tests.tiny_models import make_tiny, make_tokenizer

LENGTH, SKIP = 16, 2
OPTIONS = JacobianOptions(skip_first=SKIP, batch_size=2)


@pytest.fixture
def hf():
    return make_tiny("llama")


@pytest.fixture
def tok(tmp_path):
    return make_tokenizer(tmp_path / "tok")


@pytest.fixture
def model(hf, tok):
    return interlayer.load_model(hf, tokenizer=tok)


@pytest.fixture
def text(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "text.txt"
    path.write_text("\n".join(" ".join(f"w{rng.randint(4, 63)}" for _ in range(30)) for _ in range(40)))
    return str(path)


def fit(model, text, **kw):
    return fit_jacobian_lens(model, text, kw.pop("options", OPTIONS), tokens=kw.pop("tokens", 75),
                             context_length=LENGTH, progress=False, **kw)


def block_output(output):
    return output[0] if isinstance(output, tuple) else output


def direct_jacobian(hf, ids, layer):
    """The plain way: the full [T, d, T, d] Jacobian of the last block's output with respect to
    block ``layer``'s output (torch.autograd.functional.jacobian), summed over valid target
    positions, averaged over valid source positions, then over contexts."""
    blocks, total = hf.model.layers, 0
    valid = range(SKIP, ids.shape[1] - 1)
    for context in ids:
        kept = {}
        hook = blocks[layer].register_forward_hook(lambda m, a, o: kept.__setitem__("h", block_output(o)[0]))
        with torch.no_grad():
            hf(input_ids=context[None], use_cache=False)
        hook.remove()

        def last_from(h):
            handles = [blocks[layer].register_forward_hook(lambda m, a, o: h[None]),
                       blocks[-1].register_forward_hook(lambda m, a, o: kept.__setitem__("y", block_output(o)[0]))]
            try:
                hf(input_ids=context[None], use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            return kept["y"]

        full = torch.autograd.functional.jacobian(last_from, kept["h"].clone())
        total = total + sum(full[t2, :, t, :] for t in valid for t2 in valid) / len(valid)
    return total / len(ids)


def test_fit_equals_a_direct_jacobian(model, hf, text):
    lens = fit(model, text)
    ids = jacobian_fit.full_contexts(model, text, lens.n_contexts, LENGTH)
    assert lens.source_layers == [0, 1] and lens.n_contexts == len(ids) == 5
    for layer in lens.source_layers:
        expected = direct_jacobian(hf, ids, layer)
        torch.testing.assert_close(lens.jacobians[layer], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.peers
def test_fit_equals_transformer_lens(model, hf, tok, text, tmp_path):
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.tools.analysis import JacobianLens as TLJacobianLens

    ours = fit(model, text)
    ids = jacobian_fit.full_contexts(model, text, ours.n_contexts, LENGTH)
    bridge = TransformerBridge.boot_transformers("llama", hf_model=hf, tokenizer=tok)
    prompts = [f"context {i}" for i in range(len(ids))]
    bridge.to_tokens = lambda prompt, *a, **k: ids[prompts.index(prompt)][None]  # the very same token ids
    peer = TLJacobianLens.fit(bridge, prompts, corpus="tiny", dim_batch=8, max_seq_len=LENGTH,
                              skip_first_positions=SKIP, show_progress=False)
    assert peer.source_layers == ours.source_layers and peer.n_prompts == ours.n_contexts
    for layer in ours.source_layers:  # the bridge runs eager attention, the adapter sdpa
        torch.testing.assert_close(ours.jacobians[layer], peer.jacobians[layer], rtol=1e-4, atol=1e-5)
    # and each reads the other's lens.pt
    ours.save(tmp_path / "ours")
    back = TLJacobianLens.load(str(tmp_path / "ours" / "lens.pt"))
    assert all(torch.equal(back.jacobians[l], ours.jacobians[l]) for l in ours.source_layers)
    peer.save(str(tmp_path / "peer.pt"), dtype=torch.float32)
    theirs = JacobianLens.load(tmp_path / "peer.pt", model)
    assert all(torch.equal(theirs.jacobians[l], peer.jacobians[l]) for l in ours.source_layers)


def test_interrupted_fit_resumes_to_the_same_jacobian(model, text, tmp_path, monkeypatch):
    straight = fit(model, text, out=tmp_path / "straight")
    real, calls = jacobian_fit._save_checkpoint, []

    def crash_after_two(*args):
        real(*args)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(jacobian_fit, "_save_checkpoint", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit(model, text, out=tmp_path / "resumed")
    assert (tmp_path / "resumed" / "checkpoint.pt").is_file()
    monkeypatch.setattr(jacobian_fit, "_save_checkpoint", real)
    resumed = fit(model, text, out=tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "checkpoint.pt").exists()
    for layer in straight.source_layers:
        assert torch.equal(resumed.jacobians[layer], straight.jacobians[layer])
    assert resumed.convergence == straight.convergence
    lines = (tmp_path / "resumed" / "convergence.csv").read_text().splitlines()
    assert lines[0] == "batch,contexts,layer,rel_change" and len(lines) == 1 + 3 * 2  # 5 contexts, 2 per batch
    other = dict(jacobian_fit._identity(model, [0, 1], OPTIONS, 5, LENGTH, text), skip_first=9)
    jacobian_fit._save_checkpoint(tmp_path / "resumed" / "checkpoint.pt", other, jacobian_fit._Sums([0, 1], 32))
    with pytest.raises(InterlayerError, match="skip_first"):  # another fit's checkpoint is refused
        fit(model, text, out=tmp_path / "resumed")


def test_readout_is_the_models_head_of_j_h(model, hf, text):
    lens = fit(model, text)
    h = torch.randn(5, model.d_model)
    for layer in lens.source_layers:
        direct = hf.lm_head(hf.model.norm(h @ lens.jacobians[layer].T))
        got = LayerDecoder(model, lens=lens).logits(h, layer)
        torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)
    assert torch.equal(lens.transform(h, model.n_layers - 1), h)  # the last layer is the model's own output


def test_lens_pt_round_trip(model, text, tmp_path):
    lens = fit(model, text)
    path = lens.save(tmp_path / "lens")
    assert path.name == "lens.pt"
    payload = torch.load(path, weights_only=True)
    assert {"J", "source_layers", "d_model", "n_prompts", "metadata"} <= set(payload)
    back = JacobianLens.load(tmp_path / "lens", model)
    assert back.source_layers == lens.source_layers and back.n_layers == model.n_layers
    assert all(torch.equal(back.jacobians[l], lens.jacobians[l]) for l in lens.source_layers)
    assert back.provenance == lens.provenance
    assert {"model", "weights_sha256", "tokens", "date", "interlayer_version"} <= set(back.provenance)


def test_bad_input_is_refused_clearly(model, text, tmp_path):
    lens = fit(model, text)
    with pytest.raises(InterlayerError, match="no matrix for layer 1; fitted layers are \\[0\\]"):
        JacobianLens({0: lens.jacobians[0]}, 32, 3).transform(torch.randn(2, 32), 1)
    with pytest.raises(InterlayerError, match="width 16.*d_model=32"):
        lens.transform(torch.randn(2, 16), 0)
    with pytest.raises(InterlayerError, match="layers="):
        lens.transform(torch.randn(2, 32), None)
    lens.save(tmp_path / "lens")
    wide = interlayer.load_model(make_tiny("gemma2"))
    wide_lens = JacobianLens({0: torch.eye(32)}, 32, 3, provenance={"weights_sha256": "0" * 64, "model": "other"})
    wide_lens.save(tmp_path / "other")
    with pytest.raises(InterlayerError, match="other weights"):
        JacobianLens.load(tmp_path / "other", model)
    with pytest.raises(InterlayerError, match="d_model=64"):
        JacobianLens({0: torch.eye(64)}, 64, 3).check_model(wide)
    with pytest.raises(InterlayerError, match="valid layers are 0..1"):
        fit(model, text, options=JacobianOptions(layers="2"))
    with pytest.raises(InterlayerError, match="skip_first=15"):
        fit(model, text, options=JacobianOptions(skip_first=15))
    with pytest.raises(InterlayerError, match="not a saved Jacobian lens"):
        JacobianLens.load(tmp_path / "missing")


def test_compare_lenses_takes_any_set_of_lenses(model, text):
    lens = fit(model, text)
    held_out = collect(model, text, "resid_post.*", context_length=LENGTH, limit=3, progress=False)
    comparison = compare_lenses(model, [lens], held_out)
    assert comparison.lenses == ["logit", "jacobian"]
    frame = comparison.to_frame()
    assert {"kl_logit", "kl_jacobian", "ce_jacobian", "kl_reduction_jacobian", "kl_jacobian_low"} <= set(frame)
    assert frame.iloc[-1].kl_jacobian == frame.iloc[-1].kl_logit == 0  # the last layer is the model itself
    assert comparison.kl_jacobian == comparison.kl["jacobian"]
    assert LensComparison.from_json(comparison.to_json()) == comparison
    assert len(comparison.plot().data) == 4
    old = LensComparison("m", [0], [1.0], [0.5], [2.0], [1.5], 10, {})  # the older form still builds
    assert old.kl_tuned == [0.5] and old.to_frame().kl_reduction.tolist() == [0.5]


def test_jacobian_cli(tmp_path, text, capsys):
    from interlayer.cli import dispatch as cli

    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    code = cli.main(["lens", "jacobian", "--model", str(tmp_path / "ckpt"), "--data", text, "--out",
                     str(tmp_path / "lens"), "--tokens", "60", "--context-length", str(LENGTH), "--skip-first",
                     str(SKIP), "--contexts-per-pass", "2", "--layers", "0", "--no-progress"])
    assert code == 0 and "last relative change" in capsys.readouterr().out
    lens = JacobianLens.load(tmp_path / "lens")
    assert lens.source_layers == [0] and (tmp_path / "lens" / "convergence.csv").is_file()
    assert cli.main(["lens", "jacobian", "--model", str(tmp_path / "ckpt")]) == 2  # --out is required


def test_every_lens_option_accepts_a_jacobian_lens(tmp_path):
    """load_lens (every --tuned-lens option) reads a Jacobian lens's lens.pt, file or folder."""
    import interlayer
    from interlayer.lens import JacobianLens, load_lens
    from interlayer.lens.lenses import check_lens_dir
    from tests.tiny_models import make_tiny

    model = interlayer.load_model(make_tiny("llama"))
    d, n = model.d_model, model.n_layers
    lens = JacobianLens({l: torch.eye(d) * 0.5 for l in range(n - 1)}, d, n)
    lens.save(tmp_path / "jl")
    check_lens_dir(tmp_path / "jl")
    for path in (tmp_path / "jl", tmp_path / "jl" / "lens.pt"):
        got = load_lens(path, model)
        assert isinstance(got, JacobianLens)
        h = torch.randn(3, d)
        torch.testing.assert_close(got.transform(h, 0), 0.5 * h)
