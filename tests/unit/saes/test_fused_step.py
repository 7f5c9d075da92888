"""The sparse training step (saes/fused_encoder.py) against the dense step it replaces,
written out here from the formulas it had: dense f, ``(x - b_dec) W_enc``, dense AuxK."""

from __future__ import annotations

import pytest
import torch

from interlayer.saes import SAE, SAEConfig, fused_encoder, topafa
from interlayer.saes.archs import EncodeContext
from interlayer.saes.losses import afa_target, batch_losses
from interlayer.saes.normalization import normalize
from interlayer.saes.training import NonFiniteError, TrainOptions, train_sae
from interlayer.saes.sources import TensorSource

B, D, H = 96, 24, 1024
PARAMS = ("W_enc", "b_enc", "W_dec", "b_dec")


def _reference_code(sae: SAE, pre: torch.Tensor, centred: torch.Tensor) -> torch.Tensor:
    acts = torch.relu(pre)
    if sae.cfg.arch == "topk":
        values, indices = acts.topk(sae.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, indices, values)
    if sae.cfg.arch == "batchtopk":
        values, indices = acts.flatten().topk(sae.cfg.k * pre.shape[0], sorted=False)
        return torch.zeros_like(acts.flatten()).scatter(-1, indices, values).view_as(pre)
    with torch.no_grad():
        chosen = topafa.select_sorted((acts * sae.W_dec.norm(dim=-1)).square(), centred.norm(dim=-1))
    return acts * chosen.keep


def reference_terms(sae: SAE, x: torch.Tensor, options: TrainOptions, dead: torch.Tensor) -> dict[str, torch.Tensor]:
    """The dense step as the trainer computed it before the sparse one."""
    x_in, _ = normalize(x, sae.cfg.normalization, sae.cfg.scale)
    centred = x_in - sae.b_dec
    pre = centred @ sae.W_enc + sae.b_enc
    f = _reference_code(sae, pre, centred)
    x_hat_in = f @ sae.W_dec + sae.b_dec
    mse = (x_hat_in - x_in).square().mean()
    terms = {"mse": mse, "loss": mse}
    if options.afa(sae.cfg.arch):
        terms["afa"] = (f.norm(dim=-1) - afa_target(sae, x_in)).square().mean()
        terms["loss"] = terms["loss"] + options.afa(sae.cfg.arch) * terms["afa"]
    if dead.any():
        dead_pre = torch.relu(pre[:, dead])
        values, indices = dead_pre.topk(min(options.aux_k, dead_pre.shape[-1]), dim=-1, sorted=False)
        aux_hat = torch.zeros_like(dead_pre).scatter(-1, indices, values) @ sae.W_dec[dead]
        terms["auxk"] = (aux_hat - (x_in - x_hat_in).detach()).square().mean()
    else:
        terms["auxk"] = mse.new_zeros(())
    terms["loss"] = terms["loss"] + options.auxk_coeff * terms["auxk"]
    terms["l0"] = (f > 0).sum(-1).float().mean()
    terms["fired"] = (f > 0).any(0)
    terms["_f"] = f.detach()
    return terms


def _sae(arch: str, afa_form: str | None = None) -> SAE:
    k = {"topk": 8, "batchtopk": 8}.get(arch)
    sae = SAE(SAEConfig(d_in=D, d_sae=H, arch=arch, k=k, afa_form=afa_form), seed=1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(D, generator=torch.Generator().manual_seed(5)) * 0.3)
        sae.b_enc.copy_(torch.randn(H, generator=torch.Generator().manual_seed(6)) * 0.05)
        if arch == "topafa":  # a trained-like code: few latents per token
            sae.b_enc.sub_(0.55)
    return sae.train()


def _dead(kind: str) -> torch.Tensor:
    dead = torch.zeros(H, dtype=torch.bool)
    if kind == "all":
        dead[:] = True
    elif kind == "some":
        dead[-H // 4:] = True
        dead[::7] = True
    return dead


def _grads(sae: SAE, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {n: getattr(sae, n).grad.clone() for n in PARAMS}


CASES = [("topk", None), ("batchtopk", None), ("topafa", "centred"), ("topafa", "authors")]


@pytest.mark.parametrize("cpu_paths", [True, False], ids=["csr+block", "index_add+gather"])
@pytest.mark.parametrize("dead_kind", ["none", "some", "all"])
@pytest.mark.parametrize("arch,afa_form", CASES)
def test_sparse_step_equals_the_dense_step(arch, afa_form, dead_kind, cpu_paths, monkeypatch):
    monkeypatch.setattr(fused_encoder, "CPU_PATHS", cpu_paths)
    torch.manual_seed(0)
    x = torch.randn(B, D) * 2 + 0.5
    options = TrainOptions(progress=False, aux_k=64 if dead_kind != "all" else 2 * H)
    dead = _dead(dead_kind)
    sae = _sae(arch, afa_form)
    ref = reference_terms(sae, x, options, dead)
    ref_grads = _grads(sae, ref["loss"])
    assert sae.activation.sparse_step(H)
    terms = batch_losses(sae, x, options, dead)
    assert "_f" not in terms and set(ref) - {"_f"} <= set(terms) | {"_f"}
    for name in ("mse", "loss", "l0", "auxk") + (("afa",) if "afa" in ref else ()):
        torch.testing.assert_close(terms[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
    assert torch.equal(terms["fired"], ref["fired"])
    if dead_kind == "none":
        assert float(terms["auxk"].detach()) == 0.0
    else:
        assert float(terms["auxk"].detach()) > 0
    grads = _grads(sae, terms["loss"])
    for name in PARAMS:
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6 * scale, msg=name)


@pytest.mark.parametrize("arch,afa_form", CASES)
def test_sparse_codes_are_the_dense_codes_exactly(arch, afa_form):
    torch.manual_seed(1)
    x = torch.randn(B, D)
    sae = _sae(arch, afa_form)
    ref = reference_terms(sae, x, TrainOptions(progress=False), _dead("none"))["_f"]
    with torch.no_grad():
        x_in, _ = normalize(x, sae.cfg.normalization, sae.cfg.scale)
        folded = fused_encoder.pre_activations(x_in, sae.W_enc, sae.b_enc, sae.b_dec)
        pre = (x_in - sae.b_dec) @ sae.W_enc + sae.b_enc
        # b_dec folded into the bias moves pre by rounding only (which can flip a near-tie of
        # top-AFA's argmin: the selection is compared on the same pre)
        torch.testing.assert_close(folded, pre, rtol=0, atol=1e-6)
        chosen = sae.activation.select(pre, EncodeContext(x_in - sae.b_dec, decoder=sae.W_dec))
    assert chosen is not None
    code = torch.zeros(B, H)
    code[chosen.rows, chosen.cols] = torch.relu(pre[chosen.rows, chosen.cols])
    assert torch.equal(code > 0, ref > 0)  # the same latents, exactly
    torch.testing.assert_close(code, ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(chosen.rows, chosen.rows.sort().values)  # row-major


def test_batchtopk_threshold_moves_as_before():
    torch.manual_seed(2)
    x = torch.randn(B, D)
    sparse, dense = _sae("batchtopk"), _sae("batchtopk")
    for _ in range(3):
        batch_losses(sparse, x, TrainOptions(progress=False), _dead("some"))
        with torch.no_grad():
            x_in, _ = normalize(x, dense.cfg.normalization, dense.cfg.scale)
            dense.activation.encode((x_in - dense.b_dec) @ dense.W_enc + dense.b_enc, EncodeContext(x_in, None))
        torch.testing.assert_close(sparse.activation.threshold, dense.activation.threshold, rtol=1e-5, atol=0)
    assert float(sparse.activation.threshold) > 0


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_relu_and_jumprelu_keep_the_dense_step(arch):
    sae = SAE(SAEConfig(d_in=D, d_sae=64, arch=arch), seed=0).train()
    assert not sae.activation.sparse_step(64)
    x = torch.randn(B, D)
    out = sae(x)
    terms = batch_losses(sae, x, TrainOptions(progress=False), _dead("some")[:64])
    torch.testing.assert_close(terms["mse"], (out.x_hat_in - out.x_in).square().mean())
    assert "sparsity" in terms


def test_authors_exact_keeps_the_dense_path(monkeypatch):
    sae = SAE(SAEConfig(d_in=D, d_sae=256, arch="topafa", authors_exact=True), seed=0).train()
    called = []
    monkeypatch.setattr("interlayer.saes.losses.sparse_losses", lambda *a: called.append(1))
    batch_losses(sae, torch.randn(B, D), TrainOptions(progress=False), _dead("none")[:256])
    assert not called


def test_a_dense_code_falls_back_to_the_dense_step():
    sae = SAE(SAEConfig(d_in=D, d_sae=64, arch="topk", k=16), seed=0).train()
    assert not sae.activation.sparse_step(64)  # k = 25% of h: the dense path
    terms = batch_losses(sae, torch.randn(B, D), TrainOptions(progress=False), _dead("none")[:64])
    assert float(terms["auxk"]) == 0.0  # the dense path: no AuxK without dead latents, its term 0 as the sparse one


def _saved_step(directory) -> int:
    from safetensors import safe_open
    import json

    with safe_open(str(directory / "checkpoint.safetensors"), "pt") as handle:
        return json.loads(handle.metadata()["state"])["step"]


@pytest.mark.parametrize("arch", ["topk", "topafa"])
def test_non_finite_activations_still_stop_the_run(arch, tmp_path):
    x = torch.randn(128 * 12, D)
    x[128 * 7 + 5, 3] = float("inf")
    cfg = SAEConfig(d_in=D, d_sae=H, arch=arch, k=8 if arch == "topk" else None)
    options = TrainOptions(tokens=128 * 12, batch_size=128, checkpoint_every=3, log_every=4, progress=False,
                           init_batches=1)
    with pytest.raises(NonFiniteError, match=r"NaN or inf in the activations at step (\d+): row \d+ .*"
                                             r"last good checkpoint") as info:
        train_sae(TensorSource(x, 128), cfg, options, checkpoint_dir=tmp_path)
    step = int(info.value.args[0].split("at step ")[1].split(":")[0])
    assert _saved_step(tmp_path) == step - step % 3  # written before the bad step, never after


def test_a_non_finite_loss_still_stops_the_run(tmp_path, monkeypatch):
    from interlayer.saes import loop

    calls = []

    def poisoned(*args, **kwargs):
        terms = batch_losses(*args, **kwargs)
        calls.append(1)
        if len(calls) == 6:  # step 5
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(loop, "batch_losses", poisoned)
    cfg = SAEConfig(d_in=D, d_sae=H, arch="topk", k=8)
    options = TrainOptions(tokens=128 * 12, batch_size=128, checkpoint_every=4, log_every=10, progress=False,
                           init_batches=1)
    with pytest.raises(NonFiniteError, match=r"the loss became nan at step 5 .*last good checkpoint.*step 4"):
        train_sae(TensorSource(torch.randn(128 * 12, D), 128), cfg, options, checkpoint_dir=tmp_path)
    assert _saved_step(tmp_path) == 4 and len(calls) == 8  # found at the next check (the checkpoint at step 8)
