"""The architecture registry (``saes/archs/``): a new architecture is one registration,
and the SAE, the trainer and the sweep need no edit to train it."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig, SAE_ARCHITECTURES
from interlayer.saes.archs import REGISTRY, Activation, ArchFields, Architecture, EncodeContext, architecture, register
from interlayer.saes.archs.gated import gated_state
from interlayer.saes.sources import TensorSource
from interlayer.saes.training import TrainOptions, train_sae


class _Squared(Activation):
    """A toy activation: ``f = ReLU(pre)^2`` with a sum-of-f penalty."""

    name = "squared"

    def forward(self, pre: torch.Tensor, context: EncodeContext) -> torch.Tensor:
        return torch.relu(pre).square()

    def sparsity_loss(self, pre: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        return f.sum(-1).mean()


@pytest.fixture
def toy():
    spec = register(Architecture("squared", lambda cfg: _Squared(), sparsity_coefficient="l1_coeff", uses_auxk=True))
    try:
        yield spec
    finally:
        REGISTRY.pop("squared")


def test_a_registered_toy_architecture_trains_one_step(toy):
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(d_in=8, d_sae=16, arch="squared")
    result = train_sae(TensorSource(x, 128), cfg, TrainOptions(tokens=128, batch_size=128, warmup_steps=0, progress=False))
    assert result.steps == 1 and isinstance(result.sae.activation, _Squared)
    assert set(result.history[-1]) >= {"mse", "sparsity", "loss"} and torch.isfinite(result.sae.W_enc).all()
    assert architecture("squared") is toy


def test_the_built_in_architectures_are_registered_and_unknown_names_are_refused():
    assert SAE_ARCHITECTURES == ("relu", "topk", "batchtopk", "jumprelu", "topafa")
    assert [architecture(a).uses_auxk for a in SAE_ARCHITECTURES] == [False, True, True, False, True]
    assert architecture("relu").sparsity_coefficient == "l1_coeff"
    assert architecture("jumprelu").sparsity_coefficient == "l0_coeff"
    assert TrainOptions().afa("topafa") == 1 / 32 and TrainOptions().afa("topk") == 0.0
    with pytest.raises(InterlayerError, match="unknown SAE architecture 'nope'; valid choices: .*'gated'.*'groupmax'"):
        SAEConfig(d_in=4, d_sae=8, arch="nope")


def test_every_architecture_module_is_registered_on_import_of_the_package():
    """``import interlayer.saes`` registers every ``saes/archs/<name>.py`` (gated and groupmax
    included, not only when a format reader imports them): the package imports each module."""
    folder = Path(__file__).resolve().parents[3] / "saes" / "archs"
    modules = {p.stem for p in folder.glob("*.py")} - {"__init__", "base"}
    tree = ast.parse((folder / "__init__.py").read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1
                and node.module is None for alias in node.names}
    assert modules <= imported, f"not imported by saes/archs/__init__.py: {sorted(modules - imported)}"
    assert modules <= set(REGISTRY)
    assert set(SAE_ARCHITECTURES) == {"relu", "topk", "batchtopk", "jumprelu", "topafa"}  # the --arch choices


def test_gated_is_read_only_and_computes_the_gated_code():
    """f = 1[pi_gate > 0] ReLU(exp(r_mag) x_enc + b_mag), x_enc = (x - b_dec) W_enc, pi_gate = x_enc + b_gate
    (Rajamanoharan et al. 2024), against NumPy in float64; training a Gated SAE is refused."""
    spec = architecture("gated")
    assert not spec.trainable and spec.latent_parameters == 2 and not spec.takes_k
    with pytest.raises(InterlayerError, match=r"'gated' is loaded and evaluated, not trained.*trainable: relu, topk"):
        TrainOptions().check(ArchFields("gated"))
    gen = torch.Generator().manual_seed(0)
    d, h = 6, 10
    w_enc, w_dec = torch.randn(d, h, generator=gen), torch.randn(h, d, generator=gen)
    b_dec, b_gate, b_mag, r_mag = (torch.randn(n, generator=gen) * 0.5 for n in (d, h, h, h))
    sae = SAE(SAEConfig(d, h, arch="gated", normalization="none"))
    sae.load_tensors({"W_enc": w_enc, "b_enc": b_gate, "W_dec": w_dec, "b_dec": b_dec,
                      **gated_state(r_mag, b_mag, b_gate)}, "test")
    x = torch.randn(64, d, generator=gen)
    with torch.no_grad():
        out = sae(x)
    xn, wn = x.double().numpy(), w_enc.double().numpy()
    x_enc = (xn - b_dec.double().numpy()) @ wn
    gate = (x_enc + b_gate.double().numpy()) > 0
    f = gate * np.maximum(np.exp(r_mag.double().numpy()) * x_enc + b_mag.double().numpy(), 0)
    assert 0 < gate.mean() < 1
    np.testing.assert_allclose(out.f.numpy(), f, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.x_hat.numpy(), f @ w_dec.double().numpy() + b_dec.double().numpy(),
                               rtol=1e-5, atol=1e-5)


def test_jumprelu_trains_from_and_records_its_initial_threshold(tmp_path):
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(d_in=8, d_sae=16, arch="jumprelu", jumprelu_init_threshold=0.01)
    assert torch.allclose(SAE(cfg).activation.threshold, torch.full((16,), 0.01))
    options = TrainOptions(tokens=128, batch_size=128, progress=False)
    result = train_sae(TensorSource(x, 128), cfg, options)
    result.sae.save(tmp_path / "sae")
    saved = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert saved["jumprelu_init_threshold"] == 0.01
    assert options.identity(cfg)["jumprelu_threshold"] == 0.01  # as the option was named in older checkpoints
    assert SAE.load(tmp_path / "sae").cfg.jumprelu_init_threshold == 0.01


def test_an_older_cfg_json_without_the_newer_fields_loads(tmp_path):
    sae = SAE(SAEConfig(d_in=8, d_sae=16, arch="jumprelu"))
    sae.save(tmp_path / "old")
    data = json.loads((tmp_path / "old" / "cfg.json").read_text())
    for key in ("jumprelu_init_threshold", "jumprelu_bandwidth", "afa_form", "authors_exact"):
        data.pop(key)
    (tmp_path / "old" / "cfg.json").write_text(json.dumps(data))
    assert SAE.load(tmp_path / "old").cfg.jumprelu_init_threshold == 0.001
