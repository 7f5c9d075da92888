"""SAELens's TopK training step, timed; run by benchmarks/sae.py with the SAELens venv.

    .venv-saelens/bin/python benchmarks/saelens_step.py --batch B --d-in D --d-sae H --k K --steps N --device DEV

Prints one JSON line: seconds per step over ``steps`` steps after 2 warm-up steps, with a
quarter of the latents marked dead so the AuxK path runs (as in ours). ``--sparse 1``
sets SAELens's ``use_sparse_activations`` (its TopK code as a sparse COO tensor, decoded
with ``torch.sparse.mm``: the one speed option its TopK training SAE documents).
"""

import argparse
import json
import time
import warnings

import torch

warnings.filterwarnings("ignore")

from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig  # noqa: E402
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

parser = argparse.ArgumentParser()
for name in ("batch", "d-in", "d-sae", "k", "steps", "seed", "sparse"):
    parser.add_argument(f"--{name}", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
torch.manual_seed(args.seed)
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, dtype="float32",
                                            device=args.device, use_sparse_activations=bool(args.sparse)))
sae.train()
optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))
x = torch.randn(args.batch, args.d_in, device=args.device)
dead = torch.zeros(args.d_sae, dtype=torch.bool, device=args.device)
dead[-args.d_sae // 4:] = True


def step(n):
    out = sae.training_forward_pass(TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead,
                                                   n_training_steps=n, is_logging_step=False))
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


for n in range(2):
    step(n)
sync()
start = time.perf_counter()
for n in range(args.steps):
    step(n)
sync()
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / args.steps,
                  "config": {"package": "sae_lens", "use_sparse_activations": bool(args.sparse)}}))
