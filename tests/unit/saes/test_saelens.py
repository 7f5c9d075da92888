"""SAELens interchange: our exports load in SAELens and compute what we compute; SAEs
trained in SAELens load here and compute what SAELens computes.

SAELens is installed in the same environment as interlayer (``make test`` installs
``sae-lens==6.54.12`` first, then interlayer, and checks ``pip check``). It runs through
``saelens_side.py`` in a subprocess of the same Python, so its imports (and warnings)
stay out of the test process.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig
from interlayer.saes.saelens import from_saelens, to_saelens

D_IN = 12


def _random_sae(arch, normalization, seed=0):
    k = 5 if arch in ("topk", "batchtopk") else None
    scale = 0.37 if normalization == "mean_norm" else 1.0
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=40, arch=arch, k=k, normalization=normalization, scale=scale,
                        model="tiny", site="resid_post.3"), seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(40, generator=gen) * 0.2)
        sae.b_dec.copy_(torch.randn(D_IN, generator=gen))
        if arch == "jumprelu":
            sae.activation.log_threshold.copy_((torch.rand(40, generator=gen) * 0.5 + 0.05).log())
        if arch == "batchtopk":
            sae.activation.threshold.fill_(0.4)
    return sae.eval()


CASES = [(a, n) for a in ("relu", "topk", "batchtopk", "jumprelu") for n in ("none", "standardize", "mean_norm")]


@pytest.mark.parametrize("arch,normalization", CASES)
def test_export_import_round_trip_here(tmp_path, arch, normalization):
    sae = _random_sae(arch, normalization)
    to_saelens(sae, tmp_path / "x")
    back = from_saelens(tmp_path / "x")
    x = torch.randn(50, D_IN) * 3
    torch.testing.assert_close(back(x).x_hat, sae(x).x_hat, atol=1e-5, rtol=1e-5)
    assert back.cfg.site == "resid_post.3"


def test_topafa_export_is_refused_with_the_reason():
    with pytest.raises(InterlayerError, match="no 'topafa' architecture.*exportable architectures: 'relu'"):
        to_saelens(_random_sae("topafa", "none"), "/nonexistent")


def test_unsupported_saelens_configs_are_refused(tmp_path):
    to_saelens(_random_sae("relu", "none"), tmp_path / "x")
    import json

    cfg = json.loads((tmp_path / "x" / "cfg.json").read_text())
    cfg["normalize_activations"] = "constant_norm_rescale"
    (tmp_path / "x" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(InterlayerError, match="constant_norm_rescale.*supported: 'none', 'layer_norm'"):
        from_saelens(tmp_path / "x")
    with pytest.raises(InterlayerError, match="not a SAELens SAE directory"):
        from_saelens(tmp_path / "nothing")


@pytest.mark.peers
def test_round_trip_through_saelens_itself(tmp_path):
    if importlib.util.find_spec("sae_lens") is None:
        pytest.fail("sae_lens is not installed in this environment: `make test` installs sae-lens==6.54.12 beside interlayer")
    torch.manual_seed(0)
    x = torch.randn(64, D_IN) * 2 + 0.5
    save_file({"x": x}, str(tmp_path / "inputs.safetensors"))
    ours = {}
    for arch, normalization in CASES:
        name = f"{arch}-{normalization}"
        ours[name] = _random_sae(arch, normalization, seed=len(ours))
        to_saelens(ours[name], tmp_path / "ours" / name)
    run = subprocess.run([sys.executable, str(Path(__file__).with_name("saelens_side.py")), str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    # 1. Ours, loaded by SAELens: same codes and reconstructions.
    theirs = load_file(str(tmp_path / "ours_in_saelens.safetensors"))
    for name, sae in ours.items():
        out = sae(x)
        torch.testing.assert_close(theirs[f"{name}.f"], out.f, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(theirs[f"{name}.x_hat"], out.x_hat, atol=1e-5, rtol=1e-5, msg=name)
        assert (out.f > 0).any(), name  # the comparison is not between two zero codes

    # 2. Trained in SAELens, loaded here: same codes and reconstructions.
    expected_arch = {"standard": "relu", "topk_rescaled": "topk", "topk_layer_norm": "topk", "jumprelu": "jumprelu",
                     "batchtopk": "batchtopk", "batchtopk_inference": "jumprelu"}
    for name, arch in expected_arch.items():
        directory = tmp_path / "theirs" / name
        expected = load_file(str(directory / "expected.safetensors"))
        sae = from_saelens(directory)
        assert sae.cfg.arch == arch, name
        out = sae(x)
        torch.testing.assert_close(out.x_hat, expected["x_hat"], atol=1e-5, rtol=1e-5, msg=name)
        if name != "topk_rescaled":  # there the code is scaled by the decoder norms, folded here
            torch.testing.assert_close(out.f, expected["f"], atol=1e-5, rtol=1e-5, msg=name)
        assert (out.f > 0).sum() > 0
    assert from_saelens(tmp_path / "theirs" / "topk_layer_norm").cfg.normalization == "standardize"
