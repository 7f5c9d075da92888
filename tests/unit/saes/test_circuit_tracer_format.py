"""circuit-tracer transcoder sets (saes/formats/circuit_tracer.py): a ``config.yaml`` and one
``layer_L.safetensors`` per layer, written in tmp_path as circuit-tracer 0.5 writes them
(``SingleLayerTranscoder.to_safetensors``'s names and orientation), read by
:func:`interlayer.saes.load` and checked against an independent NumPy implementation and,
where installed, against circuit-tracer's own loaders and ``SingleLayerTranscoder``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from interlayer.saes import list_saes, load, sae_formats
from interlayer.saes.formats import SAEFormatError

D, H, LAYERS = 16, 32, 3
HOOKS = {"gemma": ("ln2.hook_normalized", "hook_mlp_out", "mlp_in"),
         "llama": ("mlp.hook_in", "mlp.hook_out", "mlp_in"),
         "resid_mid": ("hook_resid_mid", "hook_mlp_out", "resid_mid")}


def _layer(seed: int, jump: bool, skip: bool) -> dict[str, torch.Tensor]:
    """One ``SingleLayerTranscoder`` state as ``to_safetensors`` saves it: ``W_enc``/``W_dec`` ``[h, d]``."""
    gen = torch.Generator().manual_seed(seed)
    state = {"W_enc": torch.randn(H, D, generator=gen) * 0.3, "W_dec": torch.randn(H, D, generator=gen) * 0.3,
             "b_enc": torch.randn(H, generator=gen) * 0.1, "b_dec": torch.randn(D, generator=gen) * 0.1}
    if jump:
        threshold = torch.rand(H, generator=gen) * 0.4
        threshold[:2] = 0.0  # a zero threshold is a ReLU there
        state["activation_function.threshold"] = threshold
    if skip:
        state["W_skip"] = torch.randn(D, D, generator=gen) * 0.1
    return state


def _config(root: Path, hooks: str = "gemma", **extra) -> None:
    hook_in, hook_out, _ = HOOKS[hooks]
    as_json = extra.pop("as_json", False)
    cfg = {"model_name": "google/gemma-2-2b", "model_kind": "transcoder_set", "feature_input_hook": hook_in,
           "feature_output_hook": hook_out, "scan": "test/scan", **extra}
    (root / "config.yaml").write_text(json.dumps(cfg) if as_json else _yaml(cfg))


def _yaml(cfg: dict) -> str:
    import yaml  # transformers requires PyYAML: always there

    return yaml.safe_dump(cfg)


def _write_set(root: Path, hooks: str = "gemma", jump: bool = True, skip: bool = True, **extra) -> list[dict]:
    """A 3-layer set in ``root`` as circuit-tracer's cache writes it (``config.yaml`` + ``layer_L.safetensors``)."""
    root.mkdir(parents=True, exist_ok=True)
    states = [_layer(10 + layer, jump, skip) for layer in range(LAYERS)]
    for layer, state in enumerate(states):
        save_file(state, str(root / f"layer_{layer}.safetensors"))
    _config(root, hooks, **extra)
    return states


def _numpy(state: dict[str, torch.Tensor], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f, x_hat)`` by circuit-tracer's formulas in float64 NumPy: ``F.linear`` encoder,
    ``pre * (pre > threshold)`` (else ReLU), ``f W_dec + b_dec + x W_skip^T``."""
    s = {k: v.double().numpy() for k, v in state.items()}
    pre = x @ s["W_enc"].T + s["b_enc"]
    theta = s.get("activation_function.threshold")
    f = pre * (pre > theta) if theta is not None else np.maximum(pre, 0.0)
    x_hat = f @ s["W_dec"] + s["b_dec"]
    return f, x_hat + (x @ s["W_skip"].T if "W_skip" in s else 0.0)


def _ours(sae, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        out = sae(x)
    return out.f.numpy(), out.x_hat.numpy()


X = torch.randn(64, D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("hooks", sorted(HOOKS))
@pytest.mark.parametrize("jump,skip", [(True, True), (False, False), (True, False)])
def test_a_layer_of_the_set_matches_the_numpy_oracle(tmp_path, hooks, jump, skip):
    states = _write_set(tmp_path, hooks, jump=jump, skip=skip)
    kind = HOOKS[hooks][2]
    sae = load(tmp_path, site=f"{kind}.1", verify=False)
    f, x_hat = _ours(sae, X)
    f_np, x_hat_np = _numpy(states[1], X.double().numpy())
    np.testing.assert_allclose(f, f_np, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_np, atol=1e-5, rtol=1e-5)
    assert (f != 0).any() and (f == 0).any()
    cfg = sae.cfg
    assert (cfg.site, cfg.output_site, cfg.arch) == (f"{kind}.1", "mlp_out.1", "jumprelu" if jump else "relu")
    assert cfg.skip == ("linear" if skip else None) and cfg.apply_b_dec_to_input is False
    assert cfg.normalization == "none" and cfg.model == "google/gemma-2-2b"
    assert cfg.origin["format"] == "circuit-tracer" and cfg.origin["layer"] == 1
    assert cfg.origin["hook_name"] == f"blocks.1.{HOOKS[hooks][0]}" and cfg.origin["scan"] == "test/scan"
    other = _numpy(states[0], X.double().numpy())[1]
    assert not np.allclose(x_hat, other, atol=1e-3)  # layer 1's weights, not layer 0's


def test_the_folder_lists_one_transcoder_per_layer_and_a_layer_file_reads_alone(tmp_path):
    states = _write_set(tmp_path)
    assert "circuit-tracer" in sae_formats()
    found = list_saes(tmp_path)
    assert [e.site for e in found] == ["mlp_in.0", "mlp_in.1", "mlp_in.2"]
    assert [e.path.name for e in found] == [f"layer_{i}.safetensors" for i in range(LAYERS)]
    sae = load(tmp_path / "layer_2.safetensors", verify=False)
    assert (sae.cfg.site, sae.cfg.output_site) == ("mlp_in.2", "mlp_out.2")
    np.testing.assert_allclose(_ours(sae, X)[1], _numpy(states[2], X.double().numpy())[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(SAEFormatError, match="3 SAEs"):
        load(tmp_path, verify=False)  # a set without site=: which layer is not said


def test_a_transcoders_list_of_hf_uris_reads_from_the_snapshot_folder(tmp_path):
    uris = [f"hf://owner/repo/layer_{i}.safetensors" for i in range(LAYERS)]
    states = _write_set(tmp_path, "llama", transcoders=uris)
    sae = load(tmp_path, site="blocks.0.ln2.hook_normalized", verify=False)
    np.testing.assert_allclose(_ours(sae, X)[1], _numpy(states[0], X.double().numpy())[1], atol=1e-5, rtol=1e-5)
    (tmp_path / "layer_2.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="layer_2.safetensors does not exist; interlayer reads no network"):
        load(tmp_path, site="mlp_in.2", verify=False)


def test_a_json_config_reads_too(tmp_path):
    _write_set(tmp_path, as_json=True)
    assert load(tmp_path, site="mlp_in.0", verify=False).cfg.site == "mlp_in.0"


def test_a_bare_layer_file_without_its_config_is_not_guessed(tmp_path):
    _write_set(tmp_path)
    (tmp_path / "config.yaml").unlink()
    with pytest.raises(SAEFormatError, match=r"circuit-tracer \(.*no circuit-tracer config.yaml beside it"):
        load(tmp_path / "layer_1.safetensors", verify=False)


def test_a_truncated_layer_file_is_named(tmp_path):
    _write_set(tmp_path)
    file = tmp_path / "layer_1.safetensors"
    file.write_bytes(file.read_bytes()[:200])
    with pytest.raises(SAEFormatError, match=r"layer_1\.safetensors cannot be read as safetensors.*truncated"):
        load(tmp_path, site="mlp_in.1", verify=False)


def test_an_encoder_and_decoder_of_different_widths_are_both_named(tmp_path):
    _write_set(tmp_path)
    state = _layer(0, True, False)
    state["W_dec"] = state["W_dec"][:24]
    save_file(state, str(tmp_path / "layer_1.safetensors"))
    with pytest.raises(SAEFormatError, match=r"W_enc \(32, 16\) has 32 latents but W_dec \(24, 16\) has 24"):
        load(tmp_path, site="mlp_in.1", verify=False)
    state = _layer(0, True, False)
    state["b_enc"] = state["b_enc"][:30]
    save_file(state, str(tmp_path / "layer_1.safetensors"))
    with pytest.raises(SAEFormatError, match=r"b_enc \(30,\) \(expected \(32,\)\)"):
        load(tmp_path, site="mlp_in.1", verify=False)


@pytest.mark.parametrize("change,message", [
    ({"threshold": torch.zeros(H)}, "holds threshold, which a SingleLayerTranscoder file has not"),
    ({"activation_function.threshold": torch.full((H,), -0.1)}, "32 JumpReLU thresholds are negative"),
])
def test_keys_and_thresholds_circuit_tracer_would_not_read_alike_are_refused(tmp_path, change, message):
    _write_set(tmp_path)
    save_file({**_layer(0, False, False), **change}, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(SAEFormatError, match=message):
        load(tmp_path, site="mlp_in.0", verify=False)


def _write_clt(root: Path, config: bool) -> Path:
    """A 3-layer CLT as ``CrossLayerTranscoder.to_safetensors`` writes it (W_enc_L / W_dec_L files)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(LAYERS):
        save_file({f"W_enc_{i}": torch.randn(H, D), f"b_enc_{i}": torch.zeros(H), f"b_dec_{i}": torch.zeros(D)},
                  str(root / f"W_enc_{i}.safetensors"))
        save_file({f"W_dec_{i}": torch.randn(H, LAYERS - i, D)}, str(root / f"W_dec_{i}.safetensors"))
    if config:
        (root / "config.yaml").write_text(json.dumps({"model_kind": "cross_layer_transcoder",
                                                      "feature_input_hook": "hook_resid_mid",
                                                      "feature_output_hook": "hook_mlp_out"}))
    return root


@pytest.mark.parametrize("config", [True, False])
def test_a_cross_layer_transcoder_is_refused_as_such(tmp_path, config):
    root = _write_clt(tmp_path / "clt", config)
    for target in (root, root / "W_enc_1.safetensors"):
        with pytest.raises(SAEFormatError, match="cross-layer transcoder .*no single-output form in interlayer"):
            load(target, site="resid_mid.1", verify=False)


# ------------------------------------------------------------------ circuit-tracer itself
@pytest.fixture(scope="module")
def peer():
    """circuit-tracer's transcoder module (installed with --no-deps; it needs torch, safetensors, huggingface_hub)."""
    import importlib

    # the peer, installed by `make install` (--no-deps): missing, the test fails, it never skips
    return importlib.import_module("circuit_tracer.transcoder.single_layer_transcoder")


def _peer_compare(sae, transcoder, x: torch.Tensor) -> None:
    with torch.no_grad():
        f_peer = transcoder.encode(x)
        x_hat_peer = transcoder.decode(f_peer, x)
        f, x_hat = _ours(sae, x)
    np.testing.assert_allclose(f, f_peer.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat, x_hat_peer.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat, transcoder(x).detach().numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.peers
@pytest.mark.parametrize("jump,skip", [(True, True), (False, False)])
def test_every_layer_matches_circuit_tracers_own_loader(tmp_path, peer, jump, skip):
    _write_set(tmp_path, "llama", jump=jump, skip=skip)
    paths = {i: str(tmp_path / f"layer_{i}.safetensors") for i in range(LAYERS)}
    theirs = peer.load_transcoder_set(paths, scan="test/scan", feature_input_hook="mlp.hook_in",
                                      feature_output_hook="mlp.hook_out", device=torch.device("cpu"),
                                      dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    assert theirs.skip_connection is skip
    for layer in range(LAYERS):
        _peer_compare(load(tmp_path, site=f"mlp_in.{layer}", verify=False), theirs[layer], X)


@pytest.mark.peers
def test_a_set_circuit_tracer_writes_and_reads_from_its_config(tmp_path, peer, monkeypatch):
    """circuit-tracer writes the set (``TranscoderSet.to_safetensors``), then its config-driven
    loader (``hf_utils.load_transcoders``, its hub download pointed at tmp_path) reads it back."""
    import huggingface_hub.constants

    # circuit-tracer 0.5 pins huggingface-hub<1.0 and imports HF_HUB_ENABLE_HF_TRANSFER, which
    # later hubs dropped (hf_transfer retired); False is its value there when the variable is unset
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_ENABLE_HF_TRANSFER", False, raising=False)
    import importlib

    hf_utils = importlib.import_module("circuit_tracer.utils.hf_utils")
    from circuit_tracer.transcoder.activation_functions import JumpReLU

    made = {}
    for layer in range(LAYERS):
        state = _layer(20 + layer, True, True)
        act = JumpReLU(state.pop("activation_function.threshold"), 0.1)
        tc = peer.SingleLayerTranscoder(D, H, act, layer, skip_connection=True, device=torch.device("cpu"),
                                        dtype=torch.float32)
        tc.load_state_dict({**state, "activation_function.threshold": act.threshold.detach()})
        made[layer] = tc
    peer.TranscoderSet(made, "ln2.hook_normalized", "hook_mlp_out").to_safetensors(str(tmp_path))
    _config(tmp_path, "gemma")
    monkeypatch.setattr(hf_utils, "snapshot_download", lambda *a, **k: str(tmp_path))
    cfg = {**_yaml_load(tmp_path / "config.yaml"), "repo_id": "owner/repo"}
    theirs = hf_utils.load_transcoders(cfg, device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)
    assert (theirs.feature_input_hook, theirs.n_layers) == ("ln2.hook_normalized", LAYERS)
    for layer in range(LAYERS):
        sae = load(tmp_path, site=f"blocks.{layer}.ln2.hook_normalized", verify=False)
        assert sae.cfg.skip == "linear" and sae.cfg.arch == "jumprelu"
        _peer_compare(sae, theirs[layer], X)
        _peer_compare(sae, made[layer], X)


def _yaml_load(file: Path) -> dict:
    return pytest.importorskip("yaml").safe_load(file.read_text())
