"""Cache benchmark: ``interlayer cache`` tokens/s against ``collect`` tokens/s, same work.

In one process, on the same model, inputs and options, round-robin so that noise hits
every method alike, medians over ``--repeats`` rounds:

  (a) ``collect``: ``interlayer.collect(model, docs, sites, tokens=N, context_length=C,
      batch_size=B, memory_mb=M)``: the forward passes and the rows copied to the host,
      kept in memory;
  (b) ``cache``: ``interlayer.cache(...)`` with the same options into a new directory:
      the same chunks, each serialised, checksummed and written atomically (fsynced) as
      a shard on the writer thread (``write_queue`` chunks in flight, default 2), the
      manifest updated after each;
  (c) ``cache_sync``: (b) with ``write_queue=0``: each shard written on the calling
      thread before the next chunk is computed (the code before the writer thread).

Tokens are counted without the BOS positions (the store drops them). The inputs are
seeded random token-id documents, packed into contexts of ``--context-length``. The
shards go to ``--dir`` (default: a temporary directory), which is emptied after each
call, outside the timing. Writes ``benchmarks/results/cache_cpu.json`` (or ``--out``)
with the configuration named. Not a timed test.

    python benchmarks/cache.py [--model gemma-3-270m] [--layers 3,8,12] [--tokens 8128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import interlayer
from interlayer.store.cache import CacheOptions

from common import device_name, write_result

HAS_QUEUE = "write_queue" in {f for f in CacheOptions.__dataclass_fields__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layers", default="3,8,12", help="comma-separated layers whose resid_post is cached, or all")
    parser.add_argument("--tokens", type=int, default=8128, help="tokens to cache (BOS excluded)")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8, help="contexts per forward pass")
    parser.add_argument("--memory-mb", type=float, default=None,
                        help="memory_mb, also the shard size (default: two batches of rows, so the run has "
                             "several shards and the writes can overlap)")
    parser.add_argument("--storage-dtype", default="float32")
    parser.add_argument("--write-queue", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the shards go (default: a temporary directory)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "cache_cpu.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    started = time.perf_counter()
    model = interlayer.load_model(args.model)
    load_s = time.perf_counter() - started
    layers = range(model.n_layers) if args.layers == "all" else [int(l) for l in args.layers.split(",")]
    sites = [f"resid_post.{l}" for l in layers]
    generator = torch.Generator().manual_seed(0)
    docs = [torch.randint(10, min(20000, model.vocab_size), (int(n),), generator=generator).tolist()
            for n in torch.randint(50, 400, (4 * args.tokens // 200 + 8,), generator=generator)]
    per_row = len(sites) * model.d_model * torch.empty((), dtype=getattr(torch, args.storage_dtype)).element_size()
    batch_rows = args.batch * (args.context_length - 1)
    memory_mb = args.memory_mb or (2 * batch_rows + 0.5) * per_row / 2**20
    common = dict(context_length=args.context_length, batch_size=args.batch, memory_mb=memory_mb,
                  storage_dtype=args.storage_dtype, progress=False)
    base = Path(args.dir or tempfile.mkdtemp(prefix="interlayer-cache-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    counter = iter(range(1 << 30))

    def run_collect():
        acts = interlayer.collect(model, docs, sites, tokens=args.tokens, **common)
        return len(acts)

    def run_cache(queue):
        out = base / f"c{next(counter)}"
        extra = {"write_queue": queue} if HAS_QUEUE else {}
        store = interlayer.cache(model, docs, sites, out, tokens=args.tokens, **common, **extra)
        return store.n_rows, store.n_shards, out

    methods = {"collect": run_collect, "cache": lambda: run_cache(args.write_queue)}
    if HAS_QUEUE:
        methods["cache_sync"] = lambda: run_cache(0)
    model.weights_sha256()  # computed once per adapter: not part of any timed call
    run_collect()  # warm-up
    shutil.rmtree(run_cache(args.write_queue)[2])
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    shards = None
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            result = fn()
            seconds[name].append(time.perf_counter() - t0)
            if isinstance(result, tuple):
                rows, shards, out = result
                shutil.rmtree(out)
            else:
                rows = result
            assert rows == args.tokens, (name, rows)
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    rates = {name: args.tokens / statistics.median(s) for name, s in seconds.items()}
    result = {
        "benchmark": "cache",
        "device": device_name(torch.device("cpu")),
        "torch": torch.__version__,
        "model": args.model,
        "load_s": round(load_s, 2),
        "configuration": {
            "sites": sites, "tokens": args.tokens, "context_length": args.context_length, "batch_size": args.batch,
            "memory_mb": round(memory_mb, 3), "shards": shards, "storage_dtype": args.storage_dtype,
            "write_queue": args.write_queue if HAS_QUEUE else "n/a (the code before the writer thread)",
            "repeats": args.repeats, "shard_dir": "temporary directory" if args.dir is None else args.dir,
            "inputs": "seeded random token-id documents of 50-400 tokens, packed",
        },
        "methods": {
            "collect": "interlayer.collect(model, docs, sites, tokens=N, **options): rows to the host, in memory",
            "cache": "interlayer.cache(model, docs, sites, out, tokens=N, **options)" +
                     (f", write_queue={args.write_queue}: shards written on the writer thread" if HAS_QUEUE
                      else ": the code before the writer thread (each shard written before the next chunk)"),
            "cache_sync": "interlayer.cache(..., write_queue=0): each shard written on the calling thread",
        },
        "seconds": {name: [round(x, 4) for x in s] for name, s in seconds.items()},
        "tokens_per_s": {name: round(r, 1) for name, r in rates.items()},
        "ratios": {f"{name}/collect": round(rates[name] / rates["collect"], 3) for name in rates if name != "collect"},
    }
    write_result(args.out, result)
    print(result["tokens_per_s"], result["ratios"])


if __name__ == "__main__":
    main()
