"""Steering benchmark, side by side in one process (not a timed test):

* generation tokens/s with a vector injected at one layer (``steer``) vs plain generation
  (target: at most 5% slower);
* a sweep of 3 layers x 5 coefficients x N prompts: what ``sweep`` runs (every cell in one
  ``stream_variants`` pass: each batch's unsteered prefix once, each cell from its layer
  on), one batched store pass per cell, and a per-prompt loop with plain Hugging Face
  forward hooks (target: at least 5x faster than the loop);
* vectors for every layer: one store pass (``train_vectors(..., "all")``) vs one pass per layer.

    python benchmarks/steering.py [--model smollm2-135m-instruct] [--prompts 100]

Writes ``benchmarks/results/steering.json`` with the device named.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import interlayer
from interlayer.steering import load_pairs, steer, train_vectors
from interlayer.steering.evaluation import answer_prompts, p_matching, p_matching_variants

from common import device_name, write_result


def timed(fn, repeats: int = 1) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def per_prompt_loop(model, prompts, vector, layers, coefs) -> np.ndarray:
    """What a user writes without the store: one forward per prompt per cell, a plain hook."""
    hf = model.model
    out = np.zeros((len(layers), len(coefs), len(prompts.prompts)))
    for i, layer in enumerate(layers):
        block = model.blocks[layer]
        for j, coef in enumerate(coefs):
            add = coef * vector[layer]

            def hook(module, args, output, add=add):
                h = output[0] if isinstance(output, tuple) else output
                return (h + add, *output[1:]) if isinstance(output, tuple) else h + add

            handle = block.register_forward_hook(hook)
            try:
                for k, ids in enumerate(prompts.prompts):
                    with torch.no_grad():
                        logits = hf(torch.tensor([ids])).logits[0, -1].double()
                    pair = logits[[prompts.matching[k], prompts.not_matching[k]]]
                    out[i, j, k] = float(torch.softmax(pair, -1)[0])
            finally:
                handle.remove()
    return out


def batched_per_cell(model, prompts, vector, layers, coefs, batch_size) -> np.ndarray:
    """One batched store pass per cell (``collect(..., edits=...)``), every block every time."""
    out = np.zeros((len(layers), len(coefs), len(prompts.prompts)))
    for i, layer in enumerate(layers):
        for j, coef in enumerate(coefs):
            out[i, j] = p_matching(model, prompts, steer(model, vector, coef, layers=[layer]).edits(), batch_size)
    return out


def batched_shared_prefix(model, prompts, vector, layers, coefs, batch_size) -> np.ndarray:
    """What ``sweep`` runs: every cell in one ``stream_variants`` pass, the unsteered pass
    (which the sweep needs for its baseline) recording each batch's prefix, each cell
    resuming after its layer."""
    variants = [{}] + [steer(model, vector, c, layers=[l]).edits() for l in layers for c in coefs]
    probs = p_matching_variants(model, prompts, variants, batch_size)[1:]
    return np.stack(probs).reshape(len(layers), len(coefs), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="persona:agreeableness")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model, device="cpu")
    mid = model.n_layers // 2
    layers = [mid - 2, mid, mid + 2]
    coefs = [-4.0, -2.0, 1.0, 2.0, 4.0]

    # vectors for every layer: one store pass vs a pass per layer
    one_pass = timed(lambda: train_vectors(model, args.dataset, "all", n=64, progress=False))
    per_layer = timed(lambda: [train_vectors(model, args.dataset, [l], n=64, progress=False) for l in range(model.n_layers)])
    vector = train_vectors(model, args.dataset, layers, normalize=False, progress=False)

    # generation: plain vs steered, interleaved
    batch = model.tokenize("The weather today is")
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  pad_token_id=model.pad_token_id)
    model.model.generate(**batch, **kwargs)  # warm-up
    plain_t, steered_t = [], []
    for _ in range(args.repeats):
        plain_t.append(timed(lambda: model.model.generate(**batch, **kwargs)))
        with steer(model, vector, 2.0, layers=[mid]):
            steered_t.append(timed(lambda: model.model.generate(**batch, **kwargs)))
    plain_tps = args.new_tokens / statistics.median(plain_t)
    steered_tps = args.new_tokens / statistics.median(steered_t)

    # sweep: batched store passes vs a per-prompt loop with plain hooks
    pairs = load_pairs(args.dataset, "test", args.prompts)
    if len(pairs) < args.prompts:
        pairs = (pairs * (args.prompts // len(pairs) + 1))[: args.prompts]
    prompts = answer_prompts(model, pairs)
    t0 = time.perf_counter()
    fast = batched_shared_prefix(model, prompts, vector, layers, coefs, args.batch_size)
    batched_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    per_cell = batched_per_cell(model, prompts, vector, layers, coefs, args.batch_size)
    per_cell_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = per_prompt_loop(model, prompts, vector, layers, coefs)
    loop_s = time.perf_counter() - t0
    max_diff = float(max(np.abs(fast - slow).max(), np.abs(per_cell - slow).max()))

    result = {
        "device": device_name(model.device), "model": args.model,
        "generation_new_tokens": args.new_tokens, "generation_plain_tps": round(plain_tps, 2),
        "generation_steered_tps": round(steered_tps, 2),
        "generation_steered_vs_plain": round(steered_tps / plain_tps, 4),
        "sweep_cells": len(layers) * len(coefs), "sweep_prompts": len(pairs), "sweep_batched_s": round(batched_s, 2),
        "sweep_layers": layers, "sweep_coefs": coefs, "sweep_batch_size": args.batch_size,
        "sweep_batched_one_pass_per_cell_s": round(per_cell_s, 2),
        "sweep_per_prompt_loop_s": round(loop_s, 2), "sweep_speedup": round(loop_s / batched_s, 2),
        "sweep_speedup_one_pass_per_cell": round(loop_s / per_cell_s, 2),
        "sweep_max_abs_diff": max_diff,
        "vectors_all_layers_one_pass_s": round(one_pass, 2), "vectors_one_pass_per_layer_s": round(per_layer, 2),
        "vectors_speedup": round(per_layer / one_pass, 2), "layers": model.n_layers,
    }
    print(f"generation tokens/s: plain {plain_tps:.1f}, steered {steered_tps:.1f} "
          f"({100 * (1 - steered_tps / plain_tps):+.1f}% slower)")
    print(f"sweep {len(layers)}x{len(coefs)}x{len(pairs)}: shared prefix (sweep) {batched_s:.1f} s, one batched pass "
          f"per cell {per_cell_s:.1f} s, per-prompt loop {loop_s:.1f} s -> {loop_s / batched_s:.1f}x "
          f"({loop_s / per_cell_s:.1f}x without prefix sharing; max |ΔP| {max_diff:.2e})")
    print(f"vectors for {model.n_layers} layers: one pass {one_pass:.1f} s, a pass per layer {per_layer:.1f} s "
          f"-> {per_layer / one_pass:.1f}x")
    write_result(Path(__file__).parent / "results" / "steering.json", result)


if __name__ == "__main__":
    main()
