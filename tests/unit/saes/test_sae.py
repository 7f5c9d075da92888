"""The SAE module: configs, shapes, normalisation, save/load and its errors."""

import json

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.normalization import denormalize, mean_norm_scale, normalize


def test_config_errors_name_the_problem_and_choices():
    with pytest.raises(InterlayerError, match="unknown SAE architecture 'gatedx'.*'topafa'"):
        SAEConfig(d_in=8, d_sae=32, arch="gatedx")
    with pytest.raises(InterlayerError, match="needs k"):
        SAEConfig(d_in=8, d_sae=32, arch="topk")
    with pytest.raises(InterlayerError, match="takes no k"):
        SAEConfig(d_in=8, d_sae=32, arch="topafa", k=4)
    with pytest.raises(InterlayerError, match="between 1 and d_sae"):
        SAEConfig(d_in=8, d_sae=32, arch="topk", k=40)
    with pytest.raises(InterlayerError, match="normalisation 'zscore'.*'standardize'"):
        SAEConfig(d_in=8, d_sae=32, arch="relu", normalization="zscore")


def test_tensor_names_and_shapes_follow_saelens():
    sae = SAE(SAEConfig(d_in=8, d_sae=32, arch="topk", k=4))
    shapes = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    assert shapes == {"W_enc": (8, 32), "W_dec": (32, 8), "b_enc": (32,), "b_dec": (8,)}
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32))


def test_forward_matches_the_formula_and_d_in_mismatch_is_refused():
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32, arch="relu", normalization="none"))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_()
    x = torch.randn(5, 8)
    out = sae(x)
    f = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert torch.allclose(out.f, f)
    assert torch.allclose(out.x_hat, f @ sae.W_dec + sae.b_dec)
    with pytest.raises(InterlayerError, match="d_in=8, got width 9"):
        sae(torch.randn(5, 9))


@pytest.mark.parametrize("kind", ["none", "standardize", "mean_norm"])
def test_normalisation_round_trip(kind):
    x = torch.randn(6, 16, dtype=torch.float64) * 3 + 1
    scale = mean_norm_scale(x)
    y, stats = normalize(x, kind, scale)
    back = denormalize(y, kind, scale, stats)
    if kind == "standardize":  # undone without the eps, as the authors and SAELens do
        mean, std = stats
        assert torch.allclose(back, (x - mean) * std / (std + 1e-5) + mean)
        assert not torch.equal(back, x)
    else:
        assert torch.allclose(back, x)
    if kind == "standardize":
        assert torch.allclose(y.mean(-1), torch.zeros(6, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(y.std(-1), torch.ones(6, dtype=torch.float64), atol=1e-4)
    if kind == "mean_norm":
        assert y.norm(dim=-1).mean().item() == pytest.approx(16 ** 0.5)


@pytest.mark.parametrize("arch,k", [("relu", None), ("topk", 4), ("batchtopk", 4), ("jumprelu", None), ("topafa", None)])
def test_save_load_round_trip(tmp_path, arch, k):
    torch.manual_seed(0)
    sae = SAE(SAEConfig(d_in=8, d_sae=32, arch=arch, k=k, normalization="mean_norm", scale=0.5, site="resid_post.1"))
    with torch.no_grad():
        sae.b_enc.normal_()
    if arch == "batchtopk":
        sae.activation.threshold.fill_(0.3)
    sae.eval().save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["normalization"] == "mean_norm"
    back = SAE.load(tmp_path / "s")
    assert back.cfg == sae.cfg
    x = torch.randn(7, 8)
    assert torch.equal(back.eval()(x).x_hat, sae(x).x_hat)


def test_loading_weights_of_another_architecture_is_refused(tmp_path):
    SAE(SAEConfig(d_in=8, d_sae=32, arch="jumprelu")).save(tmp_path / "j")
    cfg = json.loads((tmp_path / "j" / "cfg.json").read_text())
    cfg["arch"] = "relu"
    (tmp_path / "j" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InterlayerError, match="does not fit.*unexpected \\['activation.log_threshold'\\]"):
        SAE.load(tmp_path / "j")
    with pytest.raises(InterlayerError, match="not a saved SAE"):
        SAE.load(tmp_path / "missing")


@pytest.mark.parametrize("arch,k", [("relu", None), ("topk", 4), ("batchtopk", 4), ("jumprelu", None), ("topafa", None)])
@pytest.mark.parametrize("training", [True, False])
def test_sparse_decode_equals_the_dense_product_with_gradients(arch, k, training):
    from interlayer.saes.archs import EncodeContext

    torch.manual_seed(0)
    x = torch.randn(300, 16) * 2 + 1
    sae = SAE(SAEConfig(d_in=16, d_sae=512, arch=arch, k=k), seed=3)
    if arch == "batchtopk":
        sae.train()
        sae(x)  # sets the inference threshold
    if arch in ("relu", "topafa"):
        with torch.no_grad():
            sae.b_enc.fill_(-2.0)  # few positive pre-activations: a code sparse enough to decode row by row
    if arch == "jumprelu":
        with torch.no_grad():
            sae.activation.log_threshold.fill_(0.7)  # thresholds of 2: as sparse
    sae.train(training)
    with torch.no_grad():
        x_in = (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5)
        pre = (x_in - sae.b_dec) @ sae.W_enc + sae.b_enc
    code = sae.activation.encode(pre.requires_grad_(True), EncodeContext(x_in - sae.b_dec, sae.W_dec.norm(dim=-1)))
    # JumpReLU keeps the dense decode where gradients flow (its threshold's gradient needs it)
    assert code.sparse == (arch != "jumprelu")
    with torch.no_grad():
        assert sae.activation.encode(pre, EncodeContext(x_in - sae.b_dec, sae.W_dec.norm(dim=-1))).sparse
    out = sae(x)
    dense = out.f @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(out.x_hat_in, dense, atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(dense)
    grads = []
    for value in (out.x_hat_in, None):
        sae.zero_grad()
        again = sae(x)
        target = again.x_hat_in if value is not None else again.f @ sae.W_dec + sae.b_dec
        (target * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-4, rtol=1e-4, msg=name)
