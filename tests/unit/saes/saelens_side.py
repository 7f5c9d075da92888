"""Run in a subprocess of the test environment (which has SAELens) by test_saelens.py; never imported by interlayer.

    python saelens_side.py WORKDIR

1. Loads every directory under WORKDIR/ours (SAEs interlayer exported) with
   ``sae_lens.SAE.load_from_disk`` and writes its encode/decode of WORKDIR/inputs.safetensors
   to WORKDIR/ours_in_saelens.safetensors.
2. Trains small SAEs in SAELens (a few Adam steps through its own training forward pass),
   saves them to WORKDIR/theirs/NAME and writes what SAELens's inference SAE computes
   on the inputs to WORKDIR/theirs/NAME/expected.safetensors.
"""

import sys
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

warnings.filterwarnings("ignore")

from sae_lens import SAE  # noqa: E402
from sae_lens import (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUTrainingSAE,  # noqa: E402
                      JumpReLUTrainingSAEConfig, StandardTrainingSAE, StandardTrainingSAEConfig, TopKTrainingSAE,
                      TopKTrainingSAEConfig)
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

work = Path(sys.argv[1])
x = load_file(str(work / "inputs.safetensors"))["x"]
d_in = x.shape[-1]

results = {}
for directory in sorted((work / "ours").iterdir()):
    sae = SAE.load_from_disk(str(directory), device="cpu")
    f = sae.encode(x)
    results[f"{directory.name}.f"] = f
    results[f"{directory.name}.x_hat"] = sae.decode(f)
    results[f"{directory.name}.class"] = torch.tensor([len(type(sae).__name__)])
    print(directory.name, type(sae).__name__)
save_file({k: v.contiguous() for k, v in results.items()}, str(work / "ours_in_saelens.safetensors"))

torch.manual_seed(0)
common = dict(d_in=d_in, d_sae=64, dtype="float32", device="cpu")
trained = {
    "standard": StandardTrainingSAE(StandardTrainingSAEConfig(**common, l1_coefficient=0.01)),
    "topk_rescaled": TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=6, rescale_acts_by_decoder_norm=True)),
    "topk_layer_norm": TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=6, rescale_acts_by_decoder_norm=False,
                                                             normalize_activations="layer_norm")),
    "jumprelu": JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common, jumprelu_init_threshold=0.05)),
    "batchtopk": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common, k=6)),
}
train_x = torch.randn(512, d_in) * 2 + 0.5
for name, sae in trained.items():
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(30):
        batch = train_x[(step * 64) % 512:(step * 64) % 512 + 64]
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients=sae.get_coefficients() and
                                                       {k: 0.01 for k in sae.get_coefficients()},
                                                       dead_neuron_mask=None, n_training_steps=step,
                                                       is_logging_step=False))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    sae.eval()
    out_dir = work / "theirs" / name
    if name == "batchtopk":
        sae.save_model(str(out_dir))  # the training format: architecture batchtopk + topk_threshold
        inference_dir = work / "theirs" / "batchtopk_inference"
        sae.save_inference_model(str(inference_dir))  # SAELens's own inference form: jumprelu
        loaded = SAE.load_from_disk(str(inference_dir), device="cpu")
        f = loaded.encode(x)
        save_file({"f": f.contiguous(), "x_hat": loaded.decode(f).contiguous()}, str(out_dir / "expected.safetensors"))
        save_file({"f": f.contiguous(), "x_hat": loaded.decode(f).contiguous()},
                  str(inference_dir / "expected.safetensors"))
    else:
        sae.save_inference_model(str(out_dir))
        loaded = SAE.load_from_disk(str(out_dir), device="cpu")
        f = loaded.encode(x)
        save_file({"f": f.contiguous(), "x_hat": loaded.decode(f).contiguous()}, str(out_dir / "expected.safetensors"))
    print(name, "trained", type(loaded).__name__, float((f > 0).sum(-1).float().mean()))
