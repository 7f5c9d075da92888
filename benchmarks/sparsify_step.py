"""EleutherAI sparsify's TopK training step, timed; run by benchmarks/sae.py in a subprocess.

    python benchmarks/sparsify_step.py --batch B --d-in D --d-sae H --k K --steps N --device DEV

One step as its trainer (``sparsify.Trainer.fit``, eai-sparsify 1.3.3) takes it, at its
fastest documented settings: its ``SparseCoder`` forward (the ``FusedEncoder``:
linear + ReLU + top-k, with the ``index_add_``/``embedding_bag`` sparse backward; the
gather decoder, Triton on CUDA; the forward under bf16 autocast on CUDA, as its
``forward`` is decorated), the loss ``fvu + auxk_alpha * auxk_loss`` (no multi-TopK),
the decoder gradient projected, the optimizer step, the decoder rows renormalised, the
fired mask updated; ``torch.set_float32_matmul_precision("high")`` (TF32) on CUDA as
``fit`` sets it. The optimizer is torch's Adam (its ``optimizer="adam"``, as ours)
with our learning rate and betas, ``auxk_alpha = 1/32`` (ours). Its AuxK uses
``k_aux = d_in / 2`` dead latents per token and trains only their decoder rows (its
encoder's backward ignores the gradient of ``pre_acts``); ours trains their encoder
columns too. On the CPU ``SPARSIFY_DISABLE_TRITON=1`` (triton imports but its kernels
need CUDA). Prints one JSON line: seconds per step over ``steps`` steps after 2
warm-up steps, with the last quarter of the latents dead (as in ours).
"""

import argparse
import json
import os
import time
import warnings

warnings.filterwarnings("ignore")

parser = argparse.ArgumentParser()
for name in ("batch", "d-in", "d-sae", "k", "steps", "seed"):
    parser.add_argument(f"--{name}", type=int, default=0)
parser.add_argument("--device", default="cpu")
parser.add_argument("--threads", type=int, default=0)
args = parser.parse_args()
if not args.device.startswith("cuda"):
    os.environ["SPARSIFY_DISABLE_TRITON"] = "1"

import torch  # noqa: E402
from sparsify import SparseCoder, SparseCoderConfig  # noqa: E402

if args.threads:
    torch.set_num_threads(args.threads)
if args.device.startswith("cuda"):
    torch.set_float32_matmul_precision("high")
torch.manual_seed(args.seed)
sae = SparseCoder(args.d_in, SparseCoderConfig(num_latents=args.d_sae, k=args.k), device=args.device)
optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.99))
x = torch.randn(args.batch, args.d_in, device=args.device)
dead = torch.zeros(args.d_sae, dtype=torch.bool, device=args.device)
dead[-args.d_sae // 4:] = True
did_fire = torch.zeros(args.d_sae, dtype=torch.bool, device=args.device)
AUXK_ALPHA = 1 / 32


def step():
    sae.set_decoder_norm_to_unit_norm()  # as fit does before each forward
    total_variance = (x - x.mean(0)).pow(2).sum()
    out = sae(x=x, y=x, dead_mask=dead, total_variance=total_variance)
    did_fire[out.latent_indices.flatten()] = True
    loss = out.fvu + AUXK_ALPHA * out.auxk_loss + out.multi_topk_fvu / 8
    loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    optimizer.step()
    optimizer.zero_grad()


def sync():
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


for _ in range(2):
    step()
sync()
start = time.perf_counter()
for _ in range(args.steps):
    step()
sync()
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / args.steps,
                  "config": {"package": "eai-sparsify", "optimizer": "adam", "auxk_alpha": AUXK_ALPHA,
                             "k_aux": args.d_in // 2, "tf32": args.device.startswith("cuda"),
                             "bf16_autocast": args.device.startswith("cuda") and torch.cuda.is_bf16_supported(),
                             "decoder": "triton" if args.device.startswith("cuda") else "embedding_bag"}}))
