"""EleutherAI/sparsify SAEs and transcoders, read and written (saes/formats/sparsify.py),
checked against sparsify itself (its SparseCoder's encode/decode/forward, save and load)."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # its Triton decoder needs CUDA
import sparsify.sparse_coder as sparse_coder  # noqa: E402  (the peer, installed by make install)
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402
from sparsify.utils import eager_decode  # noqa: E402

from interlayer.saes import load  # noqa: E402
from interlayer.saes.formats import SAEFormatError, read_config  # noqa: E402
from interlayer.saes.formats.sparsify import to_sparsify  # noqa: E402
from interlayer.saes.sae import SAE, SAEConfig  # noqa: E402

pytestmark = pytest.mark.peers
if not torch.cuda.is_available():  # an earlier import may have picked the Triton decoder: it needs CUDA
    sparse_coder.decoder_impl = eager_decode
D, H, K = 16, 64, 4


def _coder(seed: int = 0, **cfg) -> SparseCoder:
    torch.manual_seed(seed)
    coder = SparseCoder(D, SparseCoderConfig(num_latents=H, k=K, **cfg))
    with torch.no_grad():
        for p in coder.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return coder


def _theirs(coder: SparseCoder, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sparsify's dense code and output of ``x``."""
    with torch.no_grad():
        acts, idx, _ = coder.encode(x)
        f = torch.zeros(x.shape[0], coder.num_latents).scatter(-1, idx, acts)
        return f, coder(x).sae_out


def _ours(sae: SAE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = sae(x)
        return out.f, out.x_hat


CASES = {"sae": {}, "transcoder": {"transcode": True, "skip_connection": True},
         "sae_skip": {"skip_connection": True}, "groupmax": {"activation": "groupmax"}}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sparsify_coder_loads_with_its_outputs(tmp_path, case):
    coder = _coder(**CASES[case])
    hook = "layers.3.mlp" if CASES[case].get("transcode") else "layers.3"
    coder.save_to_disk(tmp_path / hook)
    sae = load(tmp_path / hook, verify=False)
    x = torch.randn(32, D)
    f_theirs, out_theirs = _theirs(coder, x)
    f_ours, out_ours = _ours(sae, x)
    torch.testing.assert_close(f_ours, f_theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_ours, out_theirs, atol=1e-5, rtol=1e-5)
    assert sae.cfg.origin["format"] == "sparsify" and sae.cfg.origin["hookpoint"] == hook
    if case == "transcoder":
        assert (sae.cfg.site, sae.cfg.output_site, sae.cfg.apply_b_dec_to_input) == ("mlp_in.3", "mlp_out.3", False)
    else:
        assert sae.cfg.site == "resid_post.3" and sae.cfg.output_site is None


@pytest.mark.parametrize("case", list(CASES))
def test_to_sparsify_round_trips_through_sparsify(tmp_path, case):
    sae = load(_save(_coder(seed=1, **CASES[case]), tmp_path / "in" / "layers.2"), verify=False)
    coder = SparseCoder.load_from_disk(to_sparsify(sae, tmp_path / "out" / "layers.2"))
    x = torch.randn(32, D)
    for got, want in zip(_theirs(coder, x), _ours(sae, x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _save(coder: SparseCoder, path):
    coder.save_to_disk(path)
    return path


def test_to_sparsify_folds_interlayer_only_features(tmp_path):
    """mean_norm's scale, an affine skip and b_dec on a transcoder's input become sparsify weights."""
    torch.manual_seed(2)
    cfg = SAEConfig(D, H, arch="topk", k=K, normalization="mean_norm", scale=1.7, skip="affine",
                    site="resid_mid.1", output_site="mlp_out.1")
    sae = SAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    coder = SparseCoder.load_from_disk(to_sparsify(sae, tmp_path / "layers.1.mlp"))
    assert coder.cfg.transcode and coder.cfg.skip_connection
    x = torch.randn(32, D)
    for got, want in zip(_theirs(coder, x), _ours(sae, x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_to_sparsify_refuses_other_architectures(tmp_path):
    sae = SAE(SAEConfig(D, H, arch="relu", normalization="none"))
    with pytest.raises(Exception, match=r"architecture 'relu'.*exportable: .*topk"):
        to_sparsify(sae, tmp_path / "x")
    assert not (tmp_path / "x" / "cfg.json").exists()


def test_a_run_folder_is_picked_by_site(tmp_path):
    _save(_coder(seed=3), tmp_path / "run" / "layers.0")
    _save(_coder(seed=4), tmp_path / "run" / "layers.1")
    coder = _coder(seed=4)
    sae = load(tmp_path / "run", site="resid_post.1", verify=False)
    assert sae.cfg.origin["hookpoint"] == "layers.1"
    x = torch.randn(8, D)
    torch.testing.assert_close(_ours(sae, x)[1], _theirs(coder, x)[1], atol=1e-5, rtol=1e-5)
    with pytest.raises(SAEFormatError, match=r"2 SAEs.*layers\.0 \(resid_post\.0\).*layers\.1"):
        load(tmp_path / "run", verify=False)


def test_a_width_that_does_not_fit_the_weights_names_both(tmp_path):
    path = _save(_coder(), tmp_path / "layers.0")
    data = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**data, "num_latents": 128}))
    with pytest.raises(SAEFormatError, match=r"128 latents.*\(64, 16\)"):
        load(path, verify=False)


def test_a_truncated_weights_file_is_named(tmp_path):
    path = _save(_coder(), tmp_path / "layers.0")
    data = (path / "sae.safetensors").read_bytes()
    (path / "sae.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(SAEFormatError, match=r"sae\.safetensors.*truncated"):
        load(path, verify=False)


def test_signed_and_unknown_activations_are_refused(tmp_path):
    path = _save(_coder(), tmp_path / "layers.0")
    data = json.loads((path / "cfg.json").read_text())
    (path / "cfg.json").write_text(json.dumps({**data, "signed": True}))
    with pytest.raises(SAEFormatError, match="signed"):
        load(path, verify=False)
    (path / "cfg.json").write_text(json.dumps({**data, "activation": "jumprelu"}))
    with pytest.raises(SAEFormatError, match=r"'jumprelu'.*topk"):
        load(path, verify=False)


def test_a_folder_of_no_format_lists_the_formats_tried(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(SAEFormatError, match=r"tried:(?s:.*)interlayer(?s:.*)saelens(?s:.*)sparsify"):
        load(tmp_path, verify=False)


def test_read_config_points_a_sparsify_folder_to_load(tmp_path):
    path = _save(_coder(), tmp_path / "layers.0")
    with pytest.raises(SAEFormatError, match=r"sparsify.*interlayer\.saes\.load"):
        read_config(path)


def test_a_run_trained_by_sparsify_loads(tmp_path):
    """sparsify's own trainer on a tiny random Llama (offline, well under a second): its
    run folder (layers.0/, layers.1/ beside its optimizer state) loads by site."""
    from datasets import Dataset
    from sparsify import Trainer, TrainConfig

    from tests.tiny_models import make_tiny

    torch.manual_seed(0)
    ds = Dataset.from_dict({"input_ids": torch.randint(4, 60, (64, 16)).tolist()}).with_format("torch")
    cfg = TrainConfig(SparseCoderConfig(num_latents=H, k=K), batch_size=8, layers=[0, 1], log_to_wandb=False,
                      save_dir=str(tmp_path), run_name="tiny", save_every=1000)
    Trainer(cfg, ds, make_tiny("llama")).fit()
    sae = load(tmp_path / "tiny", site="resid_post.1", verify=False)
    coder = SparseCoder.load_from_disk(tmp_path / "tiny" / "layers.1")
    x = torch.randn(16, coder.d_in)
    for got, want in zip(_ours(sae, x), _theirs(coder, x)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
