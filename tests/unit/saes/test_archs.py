"""The architecture registry (``saes/archs/``): a new architecture is one registration,
and the SAE, the trainer and the sweep need no edit to train it."""

import json

import pytest
import torch

from interlayer.errors import InterlayerError
from interlayer.saes import SAE, SAEConfig, SAE_ARCHITECTURES
from interlayer.saes.archs import REGISTRY, Activation, Architecture, EncodeContext, architecture, register
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
    with pytest.raises(InterlayerError, match="unknown SAE architecture 'gated'; valid choices"):
        SAEConfig(d_in=4, d_sae=8, arch="gated")


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
