"""Data-parallel SAE training throughput: 2 processes (gloo, torchrun) against 1, at the
same global batch, on cached activations.

    python benchmarks/distributed.py --activations DIR [--site resid_post.8] [--batch 4096]
                                     [--latents 5120] [--arch topk --k 32] [--steps 12]

Runs, one after another on an idle machine (each a fresh process, so nothing is shared):

* ``1 process, T threads``: every core in one process (T = the machine's cores);
* ``1 process, 1 thread``: one process with one core, the per-rank budget of the next;
* ``N processes, 1 thread each``: ``torchrun --nproc-per-node N`` (gloo), each rank
  reading its own slice of every global batch and averaging gradients.

Each run trains ``--steps`` steps after ``--warmup`` untimed ones and reports the SAE's
own training time (``TrainResult.seconds``: steps and batch reads, not start-up). The
target of issue 15: N = 2 processes reach >= 1.6x the tokens/s of 1 process. On a
2-core CPU the fair single-process baseline has both cores (1 process, 2 threads);
the 1-thread baseline is what one rank would get alone. Writes
benchmarks/results/distributed_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def worker(args: argparse.Namespace) -> None:
    """One rank (or the one process): train and print the timing as JSON on rank 0."""
    import torch

    from interlayer.store.cache import ActivationStore
    from interlayer.distributed import init, leave
    from interlayer.saes import SAEConfig
    from interlayer.saes.sources import CachedSource
    from interlayer.saes.training import TrainOptions, train_sae

    world = init()
    store = ActivationStore(args.activations)
    site = args.site or store.sites[0]
    source = CachedSource(store, site, args.batch, seed=0, world=world)
    cfg = SAEConfig(d_in=source.d_in, d_sae=args.latents, arch=args.arch, k=args.k)
    options = TrainOptions(tokens=args.batch * args.warmup, batch_size=args.batch, checkpoint_every=0, progress=False)
    train_sae(source, cfg, options)  # untimed warm-up: page cache, allocator, first collectives
    options = TrainOptions(tokens=args.batch * args.steps, batch_size=args.batch, checkpoint_every=0, progress=False)
    began = time.perf_counter()
    result = train_sae(source, cfg, options)
    wall = time.perf_counter() - began
    if world.main:
        print(json.dumps({"ranks": world.size, "threads": torch.get_num_threads(), "steps": args.steps,
                          "tokens": result.tokens, "train_seconds": result.seconds, "wall_seconds": wall,
                          "tokens_per_s": result.tokens / result.seconds}))
    leave()


def _run(argv: list[str], ranks: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = [str(Path(__file__).resolve()), "--worker", *argv]
    if ranks > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks), *script]
    else:
        cmd = [sys.executable, *script]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--activations", required=True)
    parser.add_argument("--site", default=None)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=5120)
    parser.add_argument("--arch", default="topk")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/distributed_cpu.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    argv = [a for a in sys.argv[1:] if a != "--worker"]
    cores = os.cpu_count() or 1
    runs = {
        f"1 process, {cores} threads": _run(argv, 1, cores),
        "1 process, 1 thread": _run(argv, 1, 1),
        f"{args.ranks} processes, 1 thread each": _run(argv, args.ranks, 1),
    }
    many = runs[f"{args.ranks} processes, 1 thread each"]["tokens_per_s"]
    result = {
        "benchmark": "data-parallel SAE training, gloo", "device": f"cpu ({os.uname().machine}, {cores} cores)",
        "config": {k: getattr(args, k) for k in ("activations", "site", "batch", "latents", "arch", "k", "steps")},
        "runs": runs,
        "speedup_vs_1_process_all_cores": many / runs[f"1 process, {cores} threads"]["tokens_per_s"],
        "speedup_vs_1_process_1_thread": many / runs["1 process, 1 thread"]["tokens_per_s"],
        "target": "2 processes >= 1.6x the tokens/s of 1 process (issue 15)",
    }
    for name, run in runs.items():
        print(f"{name:>28}: {run['tokens_per_s']:8.0f} tok/s")
    print(f"{args.ranks} processes vs 1 process with all cores: {result['speedup_vs_1_process_all_cores']:.2f}x; "
          f"vs 1 process with 1 thread: {result['speedup_vs_1_process_1_thread']:.2f}x")
    from benchmarks.common import write_result

    write_result(args.out, result)


if __name__ == "__main__":
    main()
