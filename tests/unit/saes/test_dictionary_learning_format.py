"""saprmarks/dictionary_learning dictionaries (saes/formats/dictionary_learning.py): each
``dict_class`` saved as ``trainSAE`` saves it (``trainer_<i>/ae.pt`` + ``config.json``),
read by :func:`interlayer.saes.load` and checked against an independent NumPy
implementation of its encoder and decoder and, where installed, against
dictionary_learning's own modules (``utils.load_dictionary``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from interlayer.saes import list_saes, load, sae_formats
from interlayer.saes.formats import SAEFormatError
from interlayer.saes.formats.dictionary_learning import DICT_CLASSES, KEYS, site_of

D, H, K = 16, 32, 4
GROUPS = [8, 8, 16]


def _state(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomised state dict of ``name`` with dictionary_learning's keys and shapes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"bias": (D,), "b_dec": (D,), "decoder_bias": (D,), "decoder.bias": (D,), "encoder.bias": (H,),
              "b_enc": (H,), "r_mag": (H,), "gate_bias": (H,), "mag_bias": (H,), "encoder.weight": (H, D),
              "decoder.weight": (D, H), "W_enc": (D, H), "W_dec": (H, D)}
    state = {key: torch.randn(*shapes[key], generator=gen) * 0.3 for key in KEYS[name] if key in shapes}
    if "k" in KEYS[name]:
        state["k"] = torch.tensor(K, dtype=torch.int)
    if name in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        state["threshold"] = torch.tensor(0.15)
    if name == "MatryoshkaBatchTopKSAE":
        state["group_sizes"] = torch.tensor(GROUPS)
    if name == "JumpReluAutoEncoder":
        state["threshold"] = torch.rand(H, generator=gen) * 0.3
        state["threshold"][:3] = torch.tensor([0.0, -0.2, -1.0])  # at or below 0: acts as 0 under its ReLU
    return state


def _save(folder: Path, name: str, state: dict[str, torch.Tensor] | None = None, **trainer) -> Path:
    """``folder`` as trainSAE writes a trainer's: ``config.json`` then ``ae.pt``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"trainer": {"dict_class": name, "trainer_class": "T", "activation_dim": D, "dict_size": H,
                          "layer": 3, "lm_name": "EleutherAI/pythia-70m-deduped",
                          "submodule_name": "resid_post_layer_3",
                          **({"k": K} if "k" in KEYS[name] else {}),
                          **({"group_sizes": GROUPS} if name == "MatryoshkaBatchTopKSAE" else {}), **trainer},
              "buffer": {"d_submodule": D, "io": "out", "n_ctxs": 8, "ctx_len": 4}}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    state = _state(name) if state is None else state
    torch.save({key: value.cpu() for key, value in state.items()}, folder / "ae.pt")
    return folder


def _relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def _numpy(name: str, state: dict[str, torch.Tensor], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(f, x_hat)`` of ``x`` by dictionary_learning's formulas, in float64 NumPy."""
    s = {key: value.double().numpy() for key, value in state.items()}
    if name == "AutoEncoder":  # from_pretrained normalises the decoder's columns: f times their norms
        f = _relu((x - s["bias"]) @ s["encoder.weight"].T + s["encoder.bias"])
        return f * np.linalg.norm(s["decoder.weight"], axis=0), f @ s["decoder.weight"].T + s["bias"]
    if name == "AutoEncoderNew":
        f = _relu(x @ s["encoder.weight"].T + s["encoder.bias"])
        return f, f @ s["decoder.weight"].T + s["decoder.bias"]
    if name == "GatedAutoEncoder":
        x_enc = (x - s["decoder_bias"]) @ s["encoder.weight"].T
        f = (x_enc + s["gate_bias"] > 0) * _relu(np.exp(s["r_mag"]) * x_enc + s["mag_bias"])
        return f, f @ s["decoder.weight"].T + s["decoder_bias"]
    if name == "JumpReluAutoEncoder":
        pre = x @ s["W_enc"] + s["b_enc"]
        f = _relu(pre * (pre > s["threshold"]))
        return f, f @ s["W_dec"] + s["b_dec"]
    w_enc, b_enc = (s["W_enc"], s["b_enc"]) if "W_enc" in s else (s["encoder.weight"].T, s["encoder.bias"])
    w_dec = s["W_dec"] if "W_dec" in s else s["decoder.weight"].T
    acts = _relu((x - s["b_dec"]) @ w_enc + b_enc)
    if name == "AutoEncoderTopK":
        keep = np.argsort(-acts, axis=-1)[:, :K]
        f = np.zeros_like(acts)
        np.put_along_axis(f, keep, np.take_along_axis(acts, keep, axis=-1), axis=-1)
    else:
        f = acts * (acts > float(s["threshold"]))
    return f, f @ w_dec + s["b_dec"]


def _ours(sae, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = sae(x)
    return out.f, out.x_hat


@pytest.mark.parametrize("name", DICT_CLASSES)
def test_every_dict_class_matches_the_numpy_oracle(tmp_path, name):
    state = _state(name)
    sae = load(_save(tmp_path / "trainer_0", name, state), verify=False)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(1))
    f, x_hat = _ours(sae, x)
    f_np, x_hat_np = _numpy(name, state, x.double().numpy())
    np.testing.assert_allclose(f.numpy(), f_np, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat.numpy(), x_hat_np, atol=1e-5, rtol=1e-5)
    assert (f != 0).any() and (f == 0).any()  # a code, neither all zero nor dense
    assert sae.cfg.origin["format"] == "dictionary_learning" and sae.cfg.origin["dict_class"] == name
    assert sae.cfg.site == "resid_post.3" and sae.cfg.model == "EleutherAI/pythia-70m-deduped"
    assert sae.cfg.normalization == "none"


@pytest.fixture(scope="module")
def peer():
    """dictionary_learning's own loader (installed with --no-deps: only its dictionary modules are needed)."""
    return pytest.importorskip("dictionary_learning.utils")


@pytest.mark.peers
@pytest.mark.parametrize("name", DICT_CLASSES)
def test_every_dict_class_matches_dictionary_learning_itself(tmp_path, peer, name):
    folder = _save(tmp_path / "trainer_0", name)
    sae = load(folder, verify=False)
    with torch.no_grad():
        theirs, config = peer.load_dictionary(str(folder), device="cpu")
        theirs.eval()
        x = torch.randn(64, D, generator=torch.Generator().manual_seed(2))
        f_theirs = theirs.encode(x)
        x_hat_theirs = theirs.decode(f_theirs)
        f_ours, x_hat_ours = _ours(sae, x)
        torch.testing.assert_close(f_ours, f_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(x_hat_ours, x_hat_theirs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(f_theirs @ sae.W_dec + sae.b_dec, x_hat_theirs, atol=1e-5, rtol=1e-5)
    assert config["trainer"]["dict_class"] == name


@pytest.mark.peers
def test_a_batchtopk_without_threshold_reads_as_its_relu(tmp_path, peer):
    state = _state("BatchTopKSAE")
    state["threshold"] = torch.tensor(-1.0)  # saved before threshold_start_step
    folder = _save(tmp_path / "trainer_0", "BatchTopKSAE", state)
    with pytest.warns(UserWarning, match="no inference threshold"):
        sae = load(folder, verify=False)
    assert sae.cfg.arch == "relu"
    theirs, _ = peer.load_dictionary(str(folder), device="cpu")
    x = torch.randn(32, D)
    with torch.no_grad():
        torch.testing.assert_close(_ours(sae, x)[0], theirs.encode(x), atol=1e-5, rtol=1e-5)


def test_a_backup_and_a_step_checkpoint_load(tmp_path):
    state = _state("AutoEncoderTopK")
    folder = _save(tmp_path / "trainer_0", "AutoEncoderTopK", state)
    (folder / "checkpoints").mkdir()
    torch.save(state, folder / "checkpoints" / "ae_10.pt")
    x = torch.randn(16, D)
    want = _numpy("AutoEncoderTopK", state, x.double().numpy())
    step = load(folder / "checkpoints" / "ae_10.pt", verify=False)
    np.testing.assert_allclose(_ours(step, x)[1].numpy(), want[1], atol=1e-5, rtol=1e-5)
    # trainSAE's backup: the state in the normalised space (x / norm_factor), with its optimiser
    torch.save({"step": 5, "ae": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
                "config": {"k": K}, "norm_factor": 2.0}, folder / "ae.pt")
    backup = load(folder, verify=False)
    f, x_hat = _ours(backup, x)
    half = _numpy("AutoEncoderTopK", state, x.double().numpy() / 2.0)
    np.testing.assert_allclose(f.numpy(), half[0], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(x_hat.numpy(), half[1] * 2.0, atol=1e-5, rtol=1e-5)
    assert (backup.cfg.normalization, backup.cfg.scale, backup.cfg.origin["norm_factor"]) == ("mean_norm", 0.5, 2.0)


@pytest.mark.parametrize(("submodule", "io", "layer", "site"), [
    ("resid_post_layer_3", "out", 3, "resid_post.3"), ("resid_out_layer5", "out", None, "resid_post.5"),
    ("resid_pre_layer_2", "out", 2, "resid_pre.2"), ("mlp_out_layer_2", "out", 2, None),
    ("attn_out_layer1", "out", 1, None), ("resid_post_layer_3", "out", 4, None),
    ("gpt_neox.layers.4", "in", 4, "resid_pre.4"), ("model.layers.7", "out", 7, "resid_post.7"),
    ("model.layers.7", "in_and_out", 7, None), ("gpt_neox.layers.1.mlp", "out", 1, None), ("embed", "out", None, None),
])
def test_the_site_is_named_only_where_unambiguous(submodule, io, layer, site):
    assert site_of({"submodule_name": submodule, "layer": layer}, {"io": io}, Path("/r/x/trainer_0/ae.pt")) == site


def test_an_unknown_submodule_keeps_its_name_in_origin_and_folders_name_the_site(tmp_path):
    sae = load(_save(tmp_path / "trainer_0", "AutoEncoder", submodule_name="mlp_out_layer_2", layer=2), verify=False)
    assert sae.cfg.site is None and sae.cfg.origin["submodule_name"] == "mlp_out_layer_2"
    assert load(tmp_path / "trainer_0", verify=False, site="mlp_out.2").cfg.site == "mlp_out.2"
    folder = _save(tmp_path / "resid_post_layer_6" / "trainer_0", "AutoEncoder", submodule_name=None, layer=None)
    assert load(folder, verify=False).cfg.site == "resid_post.6"


def test_a_run_folder_lists_its_trainers(tmp_path):
    _save(tmp_path / "run" / "trainer_0", "AutoEncoderTopK")
    _save(tmp_path / "run" / "trainer_1", "BatchTopKSAE", _state("BatchTopKSAE", seed=3))
    found = list_saes(tmp_path / "run")
    assert [(e.label, e.site) for e in found] == [("trainer_0", "resid_post.3"), ("trainer_1", "resid_post.3")]
    with pytest.raises(SAEFormatError, match=r"dictionary_learning layout with 2 SAEs.*trainer_0.*trainer_1"):
        load(tmp_path / "run", verify=False)
    assert load(found[1].path, verify=False).cfg.arch == "batchtopk"
    assert "dictionary_learning" in sae_formats()


def test_a_truncated_ae_pt_is_named(tmp_path):
    folder = _save(tmp_path / "trainer_0", "AutoEncoder")
    data = (folder / "ae.pt").read_bytes()
    (folder / "ae.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFormatError, match=r"trainer_0/ae\.pt.*(damaged or truncated)"):
        load(folder, verify=False)


def test_a_width_mismatch_names_both(tmp_path):
    folder = _save(tmp_path / "trainer_0", "JumpReluAutoEncoder", dict_size=48)
    with pytest.raises(SAEFormatError, match=r"config\.json gives trainer\.dict_size=48 but .*ae\.pt holds a "
                                             r"JumpReluAutoEncoder with dict_size=32"):
        load(folder, verify=False)
    _save(folder, "AutoEncoderTopK", k=5)
    with pytest.raises(SAEFormatError, match=r"trainer\.k=5 but .*k buffer is 4"):
        load(folder, verify=False)


def test_an_unknown_dict_class_lists_the_valid_ones(tmp_path):
    folder = _save(tmp_path / "trainer_0", "AutoEncoder", dict_class="CrossCoder")
    with pytest.raises(SAEFormatError, match=r"'CrossCoder'.*valid: 'AutoEncoder'.*'BatchTopKSAE'.*"
                                             r"'MatryoshkaBatchTopKSAE', 'JumpReluAutoEncoder'"):
        load(folder, verify=False)
    _save(folder, "GatedAutoEncoder", _state("AutoEncoder"))  # the keys of another class
    with pytest.raises(SAEFormatError, match=r"not hold a GatedAutoEncoder state dict: "
                                             r"missing \['decoder_bias', 'gate_bias'"):
        load(folder, verify=False)


MARKER: list[str] = []


def _touch(path: str) -> None:
    """What a malicious ``ae.pt`` would run on unpickling: leaves a file and a note behind."""
    Path(path).touch()
    MARKER.append(path)


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


@pytest.mark.parametrize("payload", ["os.system", "reduce"])
def test_an_ae_pt_carrying_pickled_callables_is_refused_and_nothing_runs(tmp_path, payload):
    folder = _save(tmp_path / "trainer_0", "AutoEncoder")
    marker = tmp_path / "ran"
    state = dict(_state("AutoEncoder"))
    state["x"] = os.system if payload == "os.system" else _Payload(marker)
    torch.save(state, folder / "ae.pt")
    MARKER.clear()
    with pytest.raises(SAEFormatError, match=r"trainer_0/ae\.pt carries pickled Python objects other than tensors"):
        load(folder, verify=False)
    assert not marker.exists() and MARKER == []
    if payload == "reduce":  # the payload is live: an unrestricted unpickler would have run it
        torch.load(folder / "ae.pt", weights_only=False)
        assert marker.exists() and MARKER == [str(marker)]


def test_a_state_dict_of_non_tensors_is_refused(tmp_path):
    folder = _save(tmp_path / "trainer_0", "AutoEncoder")
    torch.save({"encoder.weight": [1.0, 2.0]}, folder / "ae.pt")
    with pytest.raises(SAEFormatError, match=r"ae\.pt is not a state dict of tensors"):
        load(folder, verify=False)
