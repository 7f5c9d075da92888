"""Gemma Scope, Gemma Scope 2 and Llama Scope read by interlayer.saes.load (saes/formats/
gemma_scope.py, gemma_scope_2.py, llama_scope.py): files built to the published layouts in
tmp_path, checked against a NumPy implementation of each activation and, where SAELens
reads the format, against SAELens's own loader (its hf_hub_download pointed at the files)."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from interlayer.saes import SAEFormatError, SAEMismatchError, list_saes, load
from interlayer.saes.archs.base import Code

D, H = 16, 32


def _arrays(seed: int, d_out: int = D) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"W_enc": rng.normal(size=(D, H)).astype(np.float32), "W_dec": rng.normal(size=(H, d_out)).astype(np.float32),
            "b_enc": rng.normal(size=H).astype(np.float32) * 0.5, "b_dec": rng.normal(size=d_out).astype(np.float32),
            "threshold": rng.uniform(0.2, 1.5, size=H).astype(np.float32)}


def _x(seed: int = 99, n: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32) * 1.5


def _jumprelu(x, w_enc, b_enc, threshold, w_dec, b_dec, scale=1.0, skip=None, centre=False):
    """The NumPy oracle: JumpReLU on ``scale x`` (minus ``b_dec`` with ``centre``), decoded and
    divided by ``scale`` (+ ``x skip``)."""
    x = x.astype(np.float64)
    pre = (x * scale - (b_dec if centre else 0)) @ w_enc + b_enc
    f = pre * (pre > threshold)
    out = (f @ w_dec + b_dec) / scale
    return f, out + (x @ skip if skip is not None else 0)


def _topk(x, w_enc, b_enc, k, w_dec, b_dec, scale=1.0):
    pre = np.maximum((x.astype(np.float64) * scale) @ w_enc + b_enc, 0)
    f = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[:, :k]
    np.put_along_axis(f, idx, np.take_along_axis(pre, idx, axis=-1), axis=-1)
    return f, (f @ w_dec + b_dec) / scale


def _check(sae, x: np.ndarray, f: np.ndarray, out: np.ndarray, out_in: np.ndarray | None = None) -> None:
    """interlayer's encode, decode (in the SAE's space) and reconstruct against the oracle's."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        got_f = sae.encode(xt)
        np.testing.assert_allclose(got_f.numpy(), f, rtol=1e-4, atol=1e-4)
        if out_in is not None:
            np.testing.assert_allclose(sae.decode(Code(got_f)).numpy(), out_in, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(sae.reconstruct(xt).numpy(), out, rtol=1e-4, atol=1e-4)
    assert (f > 0).any() and (f == 0).any()  # the thresholds bite


# ------------------------------------------------------------------ writers
def _gs1(folder, seed=0, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(seed)
    np.savez(folder / "params.npz", **arrays, **extra)
    return arrays


def _gs2(folder, seed=0, hook_in=None, hook_out=None, affine=False, config=True):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = _arrays(seed)
    tensors = {k.lower() if k.startswith("W") else k: v for k, v in arrays.items()}
    if affine:
        arrays["skip"] = np.random.default_rng(seed + 7).normal(size=(D, D)).astype(np.float32) * 0.3
        tensors["affine_skip_connection"] = arrays["skip"]
    save_file(tensors, str(folder / "params.safetensors"))
    if config:
        cfg = {"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "hf_hook_point_in": hook_in}
        if hook_out is not None:
            cfg.update(hf_hook_point_out=hook_out, affine_connection=affine)
        (folder / "config.json").write_text(json.dumps(cfg))
    return arrays


def _llama(folder, seed=0, hook_in="blocks.3.hook_resid_post", hook_out=None, norms=(2.5, 2.5), **hp):
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    arrays = _arrays(seed)
    save_file({"encoder.weight": np.ascontiguousarray(arrays["W_enc"].T), "encoder.bias": arrays["b_enc"],
               "decoder.weight": np.ascontiguousarray(arrays["W_dec"].T), "decoder.bias": arrays["b_dec"]},
              str(folder / "checkpoints" / "final.safetensors"))
    params = {"d_model": D, "d_sae": H, "hook_point_in": hook_in, "hook_point_out": hook_out or hook_in,
              "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False, "act_fn": "jumprelu",
              "jump_relu_threshold": 0.3, "top_k": 5, "norm_activation": "dataset-wise",
              "dataset_average_activation_norm": {"in": norms[0], "out": norms[1]}, **hp}
    (folder / "hyperparams.json").write_text(json.dumps(params))
    return arrays, params


# ------------------------------------------------------------------ Gemma Scope 1
KINDS = {"res": ("resid_post.3", None, "blocks.3.hook_resid_post"), "mlp": ("mlp_out.3", None, "blocks.3.hook_mlp_out"),
         "att": (None, None, "blocks.3.attn.hook_z"),
         "transcoders": ("mlp_in.3", "mlp_out.3", "blocks.3.ln2.hook_normalized")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_gemma_scope_reads_its_release_layout(tmp_path, kind):
    folder = tmp_path / f"gemma-scope-9b-it-{kind}" / "layer_3" / "width_32" / "average_l0_7"
    a = _gs1(folder)
    sae = load(folder, verify=False)
    x = _x()
    f, out = _jumprelu(x, a["W_enc"], a["b_enc"], a["threshold"], a["W_dec"], a["b_dec"])
    _check(sae, x, f, out, out)
    site, output_site, hook = KINDS[kind]
    assert (sae.cfg.site, sae.cfg.output_site, sae.cfg.apply_b_dec_to_input) == (site, output_site, False)
    assert sae.cfg.model == "google/gemma-2-9b-it" and sae.cfg.arch == "jumprelu"
    o = sae.cfg.origin
    assert (o["format"], o["hook_name"], o["layer"], o["width"], o["average_l0"]) == ("gemma-scope", hook, 3, "32", 7)
    assert ("no_site" in o) == (kind == "att")
    assert load(folder / "params.npz", verify=False).cfg.origin["path"] == str(folder / "params.npz")


def test_gemma_scope_embedding_sae_undoes_the_sqrt_d_scale(tmp_path):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_32" / "average_l0_6"
    a = _gs1(folder, seed=1)
    sae = load(folder, verify=False)
    assert sae.cfg.site == "resid_pre.0" and sae.cfg.origin["hook_name"] == "hook_embed"
    x = _x() * math.sqrt(D)  # resid_pre.0: Gemma's embeddings times sqrt(d)
    # what Gemma Scope trained on and reconstructs: the unscaled embedding, x / sqrt(d)
    f, out = _jumprelu(x, a["W_enc"], a["b_enc"], a["threshold"], a["W_dec"], a["b_dec"], scale=1 / math.sqrt(D))
    _check(sae, x, f, out, out / math.sqrt(D))
    assert sae.cfg.normalization == "mean_norm" and sae.cfg.scale == pytest.approx(1 / math.sqrt(D))


def test_a_tree_without_a_release_folder_reads_without_a_site(tmp_path):
    folder = tmp_path / "snapshot" / "layer_3" / "width_32" / "average_l0_7"
    _gs1(folder)
    sae = load(folder, verify=False)
    assert sae.cfg.site is None and sae.cfg.model is None and "release" not in sae.cfg.origin


# ------------------------------------------------------------------ Gemma Scope 2
def test_gemma_scope_2_sae_and_affine_transcoder(tmp_path):
    root = tmp_path / "gemma-scope-2-270m-pt"
    a = _gs2(root / "resid_post" / "layer_3_width_32_l0_small", hook_in="model.layers.3.output")
    t = _gs2(root / "transcoder" / "layer_3_width_32_l0_big_affine", seed=2, affine=True,
             hook_in="model.layers.3.pre_feedforward_layernorm.output",
             hook_out="model.layers.3.post_feedforward_layernorm.output")
    x = _x()
    sae = load(root / "resid_post" / "layer_3_width_32_l0_small", verify=False)
    _check(sae, x, *_jumprelu(x, a["W_enc"], a["b_enc"], a["threshold"], a["W_dec"], a["b_dec"]))
    assert (sae.cfg.site, sae.cfg.output_site, sae.cfg.model) == ("resid_post.3", None, "google/gemma-3-270m")
    tc = load(root / "transcoder" / "layer_3_width_32_l0_big_affine" / "params.safetensors", verify=False)
    f, out = _jumprelu(x, t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"], t["b_dec"], skip=t["skip"])
    _check(tc, x, f, out)
    assert (tc.cfg.site, tc.cfg.output_site, tc.cfg.apply_b_dec_to_input, tc.cfg.skip) == \
        ("mlp_in.3", "mlp_out.3", False, "linear")
    assert tc.cfg.transcoder and tc.cfg.origin["hook_name_out"].endswith("post_feedforward_layernorm.output")


def test_gemma_scope_2_without_config_infers_from_folders_and_attn_has_no_site(tmp_path):
    folder = tmp_path / "gemma-scope-2-1b-it" / "transcoder_all" / "layer_5_width_32_l0_small_affine"
    t = _gs2(folder, affine=True, config=False)
    tc = load(folder, verify=False)
    assert (tc.cfg.site, tc.cfg.output_site, tc.cfg.skip) == ("mlp_in.5", "mlp_out.5", "linear")
    assert tc.cfg.model == "google/gemma-3-1b-it" and tc.cfg.origin["config"] == "inferred from the folders"
    x = _x()
    _check(tc, x, *_jumprelu(x, t["W_enc"], t["b_enc"], t["threshold"], t["W_dec"], t["b_dec"], skip=t["skip"]))
    att = tmp_path / "attn_out" / "layer_2_width_32_l0_medium"
    _gs2(att, hook_in="model.layers.2.self_attn.o_proj.input")
    sae = load(att, verify=False)
    assert sae.cfg.site is None and "o_proj" in sae.cfg.origin["no_site"]
    for verify in (False, True):  # asked for a site it does not read: refused, with what it reads
        with pytest.raises(SAEMismatchError, match=r"reads no interlayer site \(.*o_proj.*cannot be used at attn_out\.2"):
            load(att, site="attn_out.2", verify=verify)


# ------------------------------------------------------------------ Llama Scope
def test_llama_scope_jumprelu_rescales_by_the_dataset_norm(tmp_path):
    folder = tmp_path / "Llama3_1-8B-Base-L3R-8x"
    a, hp = _llama(folder)
    sae = load(folder, verify=False)
    s = math.sqrt(D) / 2.5
    x = _x()
    f, out = _jumprelu(x, a["W_enc"], a["b_enc"], 0.3 * s, a["W_dec"], a["b_dec"], scale=s)
    _check(sae, x, f, out, out * s)
    assert (sae.cfg.site, sae.cfg.normalization, sae.cfg.model) == ("resid_post.3", "mean_norm", "meta-llama/Llama-3.1-8B")
    assert sae.cfg.scale == pytest.approx(s) and sae.cfg.origin["layer"] == 3


def test_llama_scope_topk_and_a_transcoder_with_its_own_output_norm(tmp_path):
    a, _ = _llama(tmp_path / "topk", act_fn="topk", top_k=5)
    x = _x()
    s = math.sqrt(D) / 2.5
    _check(load(tmp_path / "topk", verify=False), x, *_topk(x, a["W_enc"], a["b_enc"], 5, a["W_dec"], a["b_dec"], s))
    t, _ = _llama(tmp_path / "tc", seed=3, hook_in="blocks.4.ln2.hook_normalized", hook_out="blocks.4.hook_mlp_out",
                  norms=(2.0, 8.0))
    tc = load(tmp_path / "tc" / "hyperparams.json", verify=False)
    s_in, s_out = math.sqrt(D) / 2.0, math.sqrt(D) / 8.0
    f, out_n = _jumprelu(x, t["W_enc"], t["b_enc"], 0.3 * s_in, t["W_dec"], t["b_dec"], scale=s_in)
    _check(tc, x, f, out_n * s_in / s_out)  # the output was normalised by its own dataset norm
    assert (tc.cfg.site, tc.cfg.output_site, tc.cfg.apply_b_dec_to_input) == ("mlp_in.4", "mlp_out.4", False)
    c, _ = _llama(tmp_path / "centred", seed=4, apply_decoder_bias_to_pre_encoder=True)
    centred = load(tmp_path / "centred", verify=False)
    _check(centred, x, *_jumprelu(x, c["W_enc"], c["b_enc"], 0.3 * s, c["W_dec"], c["b_dec"], scale=s, centre=True))
    assert centred.cfg.apply_b_dec_to_input


# ------------------------------------------------------------------ bad input
def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def test_truncated_files_are_refused_naming_them(tmp_path):
    cases = {"gs1": (_gs1, tmp_path / "gemma-scope-2b-pt-res/layer_1/width_32/average_l0_3", "params.npz"),
             "gs2": (lambda p: _gs2(p, hook_in="model.layers.1.output"), tmp_path / "resid_post/layer_1_width_32_l0_small",
                     "params.safetensors"),
             "llama": (_llama, tmp_path / "Llama3_1-8B-Base-L1R-8x", "checkpoints/final.safetensors")}
    for write, folder, name in cases.values():
        write(folder)
        _truncate(folder / name)
        with pytest.raises(SAEFormatError, match=re.escape(str(folder / name)) + ".*(damaged|truncated)"):
            load(folder, verify=False)


def test_a_width_mismatch_names_both_widths(tmp_path):
    _gs1(tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_3")
    with pytest.raises(SAEFormatError, match=r"width_16k \(16384 latents\).*32 latents"):
        load(tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_3", verify=False)
    _gs2(tmp_path / "resid_post" / "layer_1_width_65k_l0_small", hook_in="model.layers.1.output")
    with pytest.raises(SAEFormatError, match=r"width_65k \(65536 latents\).*32 latents"):
        load(tmp_path / "resid_post" / "layer_1_width_65k_l0_small", verify=False)
    _llama(tmp_path / "L1R", d_sae=64)
    with pytest.raises(SAEFormatError, match=r"d_sae=64.*32 latents"):
        load(tmp_path / "L1R", verify=False)


def test_width_labels_fit_gemma_scopes_powers_of_two(tmp_path):
    from interlayer.saes.formats.gemma_scope import check_width

    for label, width in {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072, "262k": 262144,
                         "524k": 524288, "1m": 1048576, "32": 32}.items():
        check_width(tmp_path, label, width)
    for label, width in {"16k": 32768, "1m": 524288, "32": 33}.items():
        with pytest.raises(SAEFormatError, match=f"width_{label}.*{width} latents"):
            check_width(tmp_path, label, width)


def test_a_folder_with_only_some_files_gets_the_tried_list(tmp_path):
    gs2 = tmp_path / "resid_post" / "layer_1_width_32_l0_small"
    _gs2(gs2, hook_in="model.layers.1.output")
    (gs2 / "params.safetensors").unlink()
    with pytest.raises(SAEFormatError, match=r"(?s)tried:.*- gemma-scope-2 \(.*\): no params\.safetensors"):
        load(gs2, verify=False)
    llama = tmp_path / "Llama3_1-8B-Base-L1R-8x"
    _llama(llama)
    (llama / "checkpoints" / "final.safetensors").unlink()
    with pytest.raises(SAEFormatError, match=r"(?s)- llama-scope \(.*\): no checkpoints/final\.safetensors"):
        load(llama, verify=False)
    with pytest.raises(SAEFormatError, match=r"(?s)- gemma-scope \(.*\): no params\.npz"):
        load(llama, verify=False)


def test_bad_hyperparams_are_refused_with_the_choices(tmp_path):
    _llama(tmp_path / "a", act_fn="gelu")
    with pytest.raises(SAEFormatError, match=r"act_fn 'gelu'.*valid: .*jumprelu"):
        load(tmp_path / "a", verify=False)
    _llama(tmp_path / "b", norm_activation="token-wise")
    with pytest.raises(SAEFormatError, match=r"hyperparams\.json: norm_activation 'token-wise'.*dataset-wise"):
        load(tmp_path / "b", verify=False)
    _gs1(tmp_path / "c", extra=np.zeros(3, np.float32))
    with pytest.raises(SAEFormatError, match=r"params\.npz holds 'extra'"):
        load(tmp_path / "c", verify=False)


# ------------------------------------------------------------------ repository layouts
def test_a_repository_tree_is_narrowed_by_site(tmp_path):
    gs1 = tmp_path / "gemma-scope-2b-pt-res"
    for layer in (2, 3, 4):
        _gs1(gs1 / f"layer_{layer}" / "width_32" / "average_l0_5", seed=layer)
    sae = load(gs1, site="resid_post.3", verify=False)
    assert sae.cfg.origin["layer"] == 3 and sae.cfg.site == "resid_post.3"
    a, x = _arrays(3), _x()
    _check(sae, x, *_jumprelu(x, a["W_enc"], a["b_enc"], a["threshold"], a["W_dec"], a["b_dec"]))
    with pytest.raises(SAEFormatError, match=r"gemma-scope layout with 3 SAEs.*layer_2/width_32/average_l0_5"):
        load(gs1, verify=False)
    assert load(gs1 / "layer_4", site="blocks.4.hook_resid_post", verify=False).cfg.origin["layer"] == 4

    gs2 = tmp_path / "gemma-scope-2-1b-it"
    for layer in (2, 3):
        _gs2(gs2 / "resid_post" / f"layer_{layer}_width_32_l0_small", seed=layer, hook_in=f"model.layers.{layer}.output")
    _gs2(gs2 / "transcoder" / "layer_3_width_32_l0_small", hook_in="model.layers.3.pre_feedforward_layernorm.output",
         hook_out="model.layers.3.post_feedforward_layernorm.output")
    assert len(list_saes(gs2)) == 3
    assert load(gs2, site="resid_post.3", verify=False).cfg.origin["layer"] == 3
    tc = load(gs2, site="mlp_in.3", verify=False)
    assert (tc.cfg.site, tc.cfg.output_site, tc.cfg.skip) == ("mlp_in.3", "mlp_out.3", None)

    llama = tmp_path / "Llama3_1-8B-Base-LXR-8x"
    for layer in (2, 3):
        _llama(llama / f"Llama3_1-8B-Base-L{layer}R-8x", seed=layer, hook_in=f"blocks.{layer}.hook_resid_post")
    assert load(llama, site="resid_post.3", verify=False).cfg.origin["layer"] == 3
    with pytest.raises(SAEFormatError, match=r"no SAE for resid_post\.5"):
        load(llama, site="resid_post.5", verify=False)


# ------------------------------------------------------------------ SAELens, the peer
def _lens(monkeypatch, root):
    """SAELens's loader module with its downloads pointed at ``root`` (a repository snapshot)."""
    loaders = pytest.importorskip("sae_lens.loading.pretrained_sae_loaders")
    from safetensors import safe_open

    def download(repo_id, filename, subfolder=None, **_):
        return str(root / subfolder / filename) if subfolder else str(root / filename)

    def shapes(repo_id, filename):
        with safe_open(str(root / filename), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    monkeypatch.setattr(loaders, "hf_hub_download", download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)
    return loaders


def _lens_sae(loaders, loaded, fold=None):
    from sae_lens import SAE as LensSAE

    cfg, state, _ = loaded
    sae = LensSAE.from_dict(loaders.handle_config_defaulting(cfg))
    sae.process_state_dict_for_loading(state)
    sae.load_state_dict(state)
    if fold is not None:
        sae.fold_activation_norm_scaling_factor(fold)
    return sae.eval()


def _compare(ours, theirs, x, decode_offset=0.0):
    xt = torch.from_numpy(x)
    with torch.no_grad():
        f = theirs.encode(xt)
        torch.testing.assert_close(ours.encode(xt), f, rtol=1e-5, atol=1e-5)
        want = theirs(xt) + decode_offset
        torch.testing.assert_close(ours.reconstruct(xt), want, rtol=1e-5, atol=1e-4)


@pytest.mark.peers
def test_saelens_reads_gemma_scope_as_we_do(tmp_path, monkeypatch):
    root = tmp_path / "gemma-scope-2b-pt-res"
    _gs1(root / "layer_3" / "width_32" / "average_l0_5")
    a = _gs1(root / "embedding" / "width_32" / "average_l0_6", seed=1)
    loaders = _lens(monkeypatch, root)
    x = _x()
    for folder in ("layer_3/width_32/average_l0_5", "embedding/width_32/average_l0_6"):
        theirs = _lens_sae(loaders, loaders.gemma_2_sae_huggingface_loader(
            "google/gemma-scope-2b-pt-res", folder, cfg_overrides={"d_in": D, "d_sae": H}))
        ours = load(root / folder, verify=False)
        if folder.startswith("embedding"):  # resid_pre.0; SAELens folds sqrt(d) into W_enc and W_dec but not
            # b_dec, so its reconstruction lacks (sqrt(d) - 1) b_dec of Gemma Scope's sqrt(d) (f W_dec + b_dec)
            _compare(ours, theirs, x * math.sqrt(D), (math.sqrt(D) - 1) * torch.from_numpy(a["b_dec"]))
        else:
            _compare(ours, theirs, x)


@pytest.mark.peers
def test_saelens_reads_gemma_scope_2_as_we_do(tmp_path, monkeypatch):
    root = tmp_path / "gemma-scope-2-270m-pt"
    _gs2(root / "resid_post" / "layer_3_width_32_l0_small", hook_in="model.layers.3.output")
    _gs2(root / "transcoder" / "layer_3_width_32_l0_big_affine", seed=2, affine=True,
         hook_in="model.layers.3.pre_feedforward_layernorm.output",
         hook_out="model.layers.3.post_feedforward_layernorm.output")
    loaders = _lens(monkeypatch, root)
    x = _x()
    for folder in ("resid_post/layer_3_width_32_l0_small", "transcoder/layer_3_width_32_l0_big_affine"):
        theirs = _lens_sae(loaders, loaders.gemma_3_sae_huggingface_loader("google/gemma-scope-2-270m-pt", folder))
        ours = load(root / folder, verify=False)
        assert type(theirs).__name__ == ("JumpReLUSkipTranscoder" if "affine" in folder else "JumpReLUSAE")
        _compare(ours, theirs, x)


@pytest.mark.peers
def test_saelens_reads_llama_scope_as_we_do(tmp_path, monkeypatch):
    root = tmp_path / "Llama3_1-8B-Base-LXR-8x"
    _llama(root / "Llama3_1-8B-Base-L3R-8x")
    loaders = _lens(monkeypatch, root)
    theirs = _lens_sae(loaders, loaders.llama_scope_sae_huggingface_loader(
        "fnlp/Llama3_1-8B-Base-LXR-8x", "Llama3_1-8B-Base-L3R-8x", cfg_overrides={"dtype": "float32"}),
        fold=math.sqrt(D) / 2.5)  # pretrained_saes.yaml's norm_scaling_factor: sqrt(d) / the dataset norm
    _compare(load(root / "Llama3_1-8B-Base-L3R-8x", verify=False), theirs, _x())
