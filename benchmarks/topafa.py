"""Top-AFA selection benchmark: the fused ``topafa.entries`` against the full sort, today's
``select`` / ``encode(entries=True)`` (the training path), and TopK's encode, side by side.

    python benchmarks/topafa.py [--device cuda] [--batch 4096] [--rounds 3] [--out PATH]

Configurations (each timed with the encoder matmul ``pre = (x - b_dec) W_enc + b_enc``,
except the ``*`` selection-only rows):

- ``sort+enc``: scores over all latents, ``select_sorted`` (full stable sort), ``acts * keep``;
- ``select+enc``: the same scores and mask from ``select`` (``topk`` rounds);
- ``encode+enc``: ``encode(pre, norms, A, candidates, entries=True)``, what training runs
  today (without ``coo_code``'s argsort and bincount, which would add to it);
- ``entries+enc``: ``keys = pre * norms`` and ``entries(keys, A)`` (on CUDA with Triton:
  the fused kernel);
- ``topk+enc``: TopK's ``relu(pre).topk(32)``;
- ``sort``, ``select``, ``entries``: the selection alone on precomputed scores/keys.

Two regimes: ``steady`` (a trained SAE's k distribution) and ``fresh`` (a freshly
initialised SAE and Gaussian inputs, k in the thousands). No trained SAE is on disk (and
training one on this CPU takes about 9 minutes of a shared core budget), so ``steady`` is a
stand-in for a well-trained SAE: the SAE's unit-norm decoder rows are the dictionary, each
input is a sparse combination of about ``--active`` of them (count ``active (1 + spread
N(0, 1))`` clamped to ``[active / 3, 2 active]``, coefficients ``|N(0, 1)| + 0.5``), the encoder
is the decoder's transpose and every encoder bias is ``--bias``. With the defaults k has
mean 36.3 and max 62 of 10,240 at batch 4,096 (the trained top-AFA SAE of issue 25:
mean 37.5, max 79); the scores are what matters: a few large (the active directions) over
a floor of cross-talk (about 45% of pre-activations positive).
The candidate-set size is what a trainer would pass: for ``select``/``encode`` the
90th-percentile rule of ``interlayer.saes.archs.candidates_for``, for ``entries`` the max k
rounded up to a power of two (both from the same batch). Interleaved rounds, medians of
medians, equality with the sort asserted. Writes benchmarks/results/topafa_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after an installed interlayer

from benchmarks.common import device_name, sync, timed, write_result  # noqa: E402
from interlayer.saes import SAE, SAEConfig, topafa  # noqa: E402
from interlayer.saes.archs import candidates_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def setup(batch: int, d_in: int, h: int, active: float, bias: float, device: torch.device, seed: int,
          spread: float = 0.5):
    """The encoder weights and inputs of one regime (see the module docstring); ``active``
    0 is the fresh regime (Gaussian inputs, the SAE's own initialisation)."""
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=h, arch="topafa"), seed=seed).to(device)
    w_dec, b_dec = sae.W_dec.detach(), sae.b_dec.detach()
    norms = w_dec.norm(dim=-1)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    if not active:
        return sae.W_enc.detach(), sae.b_enc.detach(), b_dec, norms, torch.randn(batch, d_in, device=device, generator=gen)
    # a dictionary-sparse row: about `active` (relative sd `spread`) decoder directions with |N(0, 1)| + 0.5 coefficients
    count = (active * (1 + spread * torch.randn(batch, 1, device=device, generator=gen))).round().clamp(active / 3, 2 * active)
    rank = torch.rand(batch, h, device=device, generator=gen).argsort(-1).argsort(-1)
    coef = (torch.randn(batch, h, device=device, generator=gen).abs() + 0.5) * (rank < count)
    x = coef @ w_dec + b_dec
    return (w_dec / norms.unsqueeze(-1)).T.contiguous(), torch.full((h,), bias, device=device), b_dec, norms, x


def regime(name: str, args, device: torch.device, batch: int, active: float, bias: float) -> dict:
    w_enc, b_enc, b_dec, norms, x = setup(batch, args.d_in, args.latents, active, bias, device, args.seed, args.spread)
    centred = x - b_dec
    target = centred.norm(dim=-1)
    pre = centred @ w_enc + b_enc
    keys = pre * norms
    scores = torch.relu(keys).square()
    ref = topafa.select_sorted(scores, target)
    first = candidates_for(ref.k)
    cap = 1 << int(ref.k.max()).bit_length()
    got = topafa.entries(keys, target, cap)
    keep = torch.zeros_like(ref.keep)
    keep[torch.repeat_interleave(torch.arange(batch, device=device), got.k), got.cols] = True
    positive = scores > 0
    assert torch.equal(got.k, ref.k) and torch.equal(keep & positive, ref.keep & positive)
    assert torch.equal(topafa.select(scores, target, first).k, ref.k)
    assert torch.equal(topafa.encode(pre, norms, target, first, entries=True)[1], ref.k)

    def encoder():
        return (x - b_dec) @ w_enc + b_enc

    def sort_enc():
        p = encoder()
        acts = torch.relu(p)
        return acts * topafa.select_sorted((acts * norms).square(), (x - b_dec).norm(dim=-1)).keep

    def select_enc():
        p = encoder()
        acts = torch.relu(p)
        return acts * topafa.select((acts * norms).square(), (x - b_dec).norm(dim=-1), first).keep

    def encode_enc():
        return topafa.encode(encoder(), norms, (x - b_dec).norm(dim=-1), first, entries=True)

    def entries_enc():
        p = encoder()
        return topafa.entries(p.detach() * norms, (x - b_dec).norm(dim=-1), cap)

    def topk_enc():
        return torch.relu(encoder()).topk(args.k, dim=-1)

    runs = {"sort": lambda: topafa.select_sorted(scores, target), "select": lambda: topafa.select(scores, target, first),
            "entries": lambda: topafa.entries(keys, target, cap), "sort+enc": sort_enc, "select+enc": select_enc,
            "encode+enc": encode_enc, "entries+enc": entries_enc, "topk+enc": topk_enc, "enc": encoder}
    rounds = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, fn in runs.items():
            rounds[key].append(timed(fn, device, args.repeats))
    ms = {key: statistics.median(v) * 1e3 for key, v in rounds.items()}
    return {"regime": name, "batch": batch, "active_directions_mean": active,
            "active_directions_spread": args.spread if active else 0.0, "encoder_bias": bias,
            "k": {"mean": float(ref.k.float().mean()), "max": int(ref.k.max()), "median": float(ref.k.float().median()),
                  "p90": float(ref.k.float().quantile(0.9))},
            "candidates": {"select_encode": first, "entries": cap}, "ms": ms,
            "entries+enc / sort+enc speedup": ms["sort+enc"] / ms["entries+enc"],
            "entries+enc / topk+enc (time ratio)": ms["entries+enc"] / ms["topk+enc"],
            "entries+enc / encode+enc speedup": ms["encode+enc"] / ms["entries+enc"],
            "entries / select speedup": ms["select"] / ms["entries"],
            "entries / sort speedup": ms["sort"] / ms["entries"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--fresh-batch", type=int, default=None, help="batch of the fresh regime (default: 1024 "
                        "on CPU, --batch on CUDA); 0 skips it")
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--latents", type=int, default=10240)
    parser.add_argument("--k", type=int, default=32, help="TopK's k")
    parser.add_argument("--active", type=float, default=64.0, help="the steady stand-in's mean number of active "
                        "decoder directions per row")
    parser.add_argument("--spread", type=float, default=0.5, help="their relative standard deviation")
    parser.add_argument("--bias", type=float, default=-0.05, help="the steady stand-in's encoder bias")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    fresh = args.fresh_batch if args.fresh_batch is not None else (1024 if device.type == "cpu" else args.batch)
    with torch.no_grad():
        results = [regime("steady (trained-k stand-in)", args, device, args.batch, args.active, args.bias)]
        if fresh:
            results.append(regime("fresh", args, device, fresh, 0.0, 0.0))
    kernel = device.type == "cuda" and __import__("interlayer.saes.topafa_triton", fromlist=["x"]).available()
    result = {"device": device_name(device), "d_in": args.d_in, "d_sae": args.latents, "rounds": args.rounds,
              "repeats": args.repeats, "entries_path": "triton kernel" if kernel else "torch",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "regimes": results}
    print(json.dumps(result, indent=2))
    tag = "cpu" if device.type == "cpu" else device_name(device).lower().replace("nvidia ", "").replace(" ", "_")
    write_result(args.out or ROOT / "benchmarks" / "results" / f"topafa_{tag}.json", result)


if __name__ == "__main__":
    main()
