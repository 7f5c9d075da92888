"""Steering benchmark, side by side in one process (not a timed test):

* generation tokens/s with a vector injected at one layer (``steer``) against plain
  generation (target: at most 5% slower), interleaved, after a warm-up;
* a sweep of 3 layers x 5 coefficients x N prompts (P(matching) at the answer token):
  what ``sweep`` runs (``shared_prefix``: every cell in one ``stream_variants`` pass, each
  batch's unsteered prefix once, each cell from its layer on) against
  - ``hf_batched_per_cell``, the lead anchor: one batched Hugging Face pass per cell, a
    plain forward hook adding the vector, the body plus the LM head on each prompt's last
    position only;
  - ``store_per_cell``: one batched store pass per cell (``collect(..., edits=...)``), which
    isolates what prefix sharing gains;
  - ``per_prompt_loop``: one forward per prompt per cell with a plain hook and
    ``logits_to_keep=1`` (the head on the last position only);
* vectors for every layer: one store pass (``train_vectors(..., "all")``) against one
  Hugging Face ``output_hidden_states`` pass over the same texts.

Every comparison gets a warm-up on a few inputs, then ``--*-repeats`` rounds that alternate
the methods (the order rotates each round); medians. The JSON's ``anchors`` names each.

    python benchmarks/steering.py [--model smollm2-135m-instruct] [--prompts 64] [--sweep-repeats 2]

Writes ``benchmarks/results/steering.json`` (or ``--out``) with the device named.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import interlayer
from interlayer.steering import load_pairs, steer, train_vectors
from interlayer.steering.evaluation import AnswerPrompts, answer_prompts, p_matching, p_matching_variants
from interlayer.steering.vectors import pair_texts

from common import device_name, write_result


def rounds(methods: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds per call of each method over ``repeats`` rounds (the order rotating each
    round), and each method's result from its last call."""
    names = list(methods)
    times, results = {name: [] for name in names}, {}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            results[name] = methods[name]()
            times[name].append(time.perf_counter() - t0)
    return times, results


def subset(prompts: AnswerPrompts, n: int) -> AnswerPrompts:
    return AnswerPrompts(prompts.prompts[:n], prompts.matching[:n], prompts.not_matching[:n])


@contextlib.contextmanager
def added(block: torch.nn.Module, add: torch.Tensor):
    """A plain forward hook adding ``add`` to a block's output at every position."""

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        return (h + add, *output[1:]) if isinstance(output, tuple) else h + add

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def pair_probability(logits: torch.Tensor, matching, not_matching) -> torch.Tensor:
    """P(matching) over the two answer tokens, from ``[n, vocab]`` logits."""
    rows = torch.arange(len(logits))
    pair = torch.stack([logits[rows, torch.as_tensor(matching)], logits[rows, torch.as_tensor(not_matching)]], -1)
    return torch.softmax(pair.double(), -1)[:, 0]


def per_prompt_loop(model, prompts, vector, layers, coefs) -> np.ndarray:
    """One forward per prompt per cell, a plain hook, the LM head on the last position only."""
    hf = model.model
    out = np.zeros((len(layers), len(coefs), len(prompts.prompts)))
    for i, layer in enumerate(layers):
        for j, coef in enumerate(coefs):
            with added(model.blocks[layer], coef * vector[layer].to(model.device)):
                for k, ids in enumerate(prompts.prompts):
                    logits = hf(torch.tensor([ids], device=model.device), logits_to_keep=1).logits[:, -1].float()
                    out[i, j, k] = float(pair_probability(logits, [prompts.matching[k]], [prompts.not_matching[k]])[0])
    return out


def hf_batched_per_cell(model, prompts, vector, layers, coefs, batch_size) -> np.ndarray:
    """One batched HF pass per cell: prompts sorted by length, right-padded batches, a plain
    hook, the body, then the LM head on each prompt's last real position only."""
    hf, pad = model.model, model.pad_token_id or 0
    order = sorted(range(len(prompts.prompts)), key=lambda k: len(prompts.prompts[k]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(prompts.prompts[k]) for k in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, k in enumerate(rows):
            ids[r, :len(prompts.prompts[k])] = torch.tensor(prompts.prompts[k])
            mask[r, :len(prompts.prompts[k])] = 1
        batches.append((rows, ids.to(model.device), mask.to(model.device), mask.sum(1).to(model.device) - 1))
    head = hf.get_output_embeddings()
    out = np.zeros((len(layers), len(coefs), len(prompts.prompts)))
    for i, layer in enumerate(layers):
        for j, coef in enumerate(coefs):
            with added(model.blocks[layer], coef * vector[layer].to(model.device)):
                for rows, ids, mask, last in batches:
                    h = hf.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
                    logits = head(h[torch.arange(len(rows), device=h.device), last]).float().cpu()
                    out[i, j, rows] = pair_probability(logits, [prompts.matching[k] for k in rows],
                                                       [prompts.not_matching[k] for k in rows]).numpy()
    return out


def store_per_cell(model, prompts, vector, layers, coefs, batch_size) -> np.ndarray:
    """One batched store pass per cell (``collect(..., edits=...)``), every block every time."""
    out = np.zeros((len(layers), len(coefs), len(prompts.prompts)))
    for i, layer in enumerate(layers):
        for j, coef in enumerate(coefs):
            out[i, j] = p_matching(model, prompts, steer(model, vector, coef, layers=[layer]).edits(), batch_size)
    return out


def shared_prefix(model, prompts, vector, layers, coefs, batch_size) -> np.ndarray:
    """What ``sweep`` runs: every cell in one ``stream_variants`` pass, the unsteered pass
    (which the sweep needs for its baseline) recording each batch's prefix, each cell
    resuming after its layer."""
    variants = [{}] + [steer(model, vector, c, layers=[l]).edits() for l in layers for c in coefs]
    probs = p_matching_variants(model, prompts, variants, batch_size)[1:]
    return np.stack(probs).reshape(len(layers), len(coefs), -1)


def hf_vectors_one_pass(model, dataset: str, n: int, batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Mean-difference vectors at every layer from one HF ``output_hidden_states`` pass over
    the same texts as ``train_vectors`` (read at each text's last token, batches of
    ``batch_size`` sorted by length, right-padded). The final norm is skipped during the
    pass so that the last hidden state is the last block's output, as the store reads it."""
    hf, pad = model.model, model.pad_token_id or 0
    pos, neg, _ = pair_texts(model, load_pairs(dataset, "generate", n))
    texts = pos + neg
    order = sorted(range(len(texts)), key=lambda k: len(texts[k]))
    reads = torch.zeros(model.n_layers, len(texts), model.d_model)
    body = hf.base_model
    norm, body.norm = body.norm, torch.nn.Identity()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            width = max(len(texts[k]) for k in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, k in enumerate(rows):
                ids[r, :len(texts[k])] = torch.tensor(texts[k])
                mask[r, :len(texts[k])] = 1
            states = body(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                          output_hidden_states=True, use_cache=False).hidden_states
            last = mask.sum(1) - 1
            for layer in range(model.n_layers):
                reads[layer, rows] = states[layer + 1][torch.arange(len(rows)), last.to(states[0].device)].float().cpu()
    finally:
        body.norm = norm
    n_pairs = len(pos)
    out = {}
    for layer in range(model.n_layers):
        v = (reads[layer, :n_pairs] - reads[layer, n_pairs:]).double().mean(0)
        out[layer] = (v / v.norm()).float()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dataset", default="persona:agreeableness")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="generation rounds")
    parser.add_argument("--sweep-repeats", type=int, default=2, help="sweep rounds (every method each round)")
    parser.add_argument("--vector-repeats", type=int, default=3, help="vector-training rounds")
    parser.add_argument("--vector-pairs", type=int, default=64)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "steering.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model, device="cpu")
    mid = model.n_layers // 2
    layers = [mid - 2, mid, mid + 2]
    coefs = [-4.0, -2.0, 1.0, 2.0, 4.0]

    # vectors for every layer: one store pass against one HF output_hidden_states pass
    vector_methods = {
        "store_one_pass": lambda: train_vectors(model, args.dataset, "all", n=args.vector_pairs, progress=False),
        "hf_output_hidden_states_one_pass": lambda: hf_vectors_one_pass(model, args.dataset, args.vector_pairs),
    }
    train_vectors(model, args.dataset, "all", n=4, progress=False)  # warm-up
    hf_vectors_one_pass(model, args.dataset, 4)
    vector_times, trained = rounds(vector_methods, args.vector_repeats)
    ours, theirs = trained["store_one_pass"], trained["hf_output_hidden_states_one_pass"]
    vectors_max_diff = max(float((ours[l] - theirs[l]).abs().max()) for l in range(model.n_layers))
    vector = train_vectors(model, args.dataset, layers, normalize=False, progress=False)

    # generation: plain vs steered, interleaved
    batch = model.tokenize("The weather today is")
    kwargs = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                  pad_token_id=model.pad_token_id)
    model.model.generate(**batch, **kwargs)  # warm-up
    plain_t, steered_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.model.generate(**batch, **kwargs)
        plain_t.append(time.perf_counter() - t0)
        with steer(model, vector, 2.0, layers=[mid]):
            t0 = time.perf_counter()
            model.model.generate(**batch, **kwargs)
            steered_t.append(time.perf_counter() - t0)
    plain_tps = args.new_tokens / statistics.median(plain_t)
    steered_tps = args.new_tokens / statistics.median(steered_t)

    # sweep
    pairs = load_pairs(args.dataset, "test", args.prompts)
    if len(pairs) < args.prompts:
        pairs = (pairs * (args.prompts // len(pairs) + 1))[: args.prompts]
    prompts = answer_prompts(model, pairs)
    bs = args.batch_size
    sweep_methods = {
        "shared_prefix": lambda p=prompts: shared_prefix(model, p, vector, layers, coefs, bs),
        "hf_batched_per_cell": lambda p=prompts: hf_batched_per_cell(model, p, vector, layers, coefs, bs),
        "store_per_cell": lambda p=prompts: store_per_cell(model, p, vector, layers, coefs, bs),
        "per_prompt_loop": lambda p=prompts: per_prompt_loop(model, p, vector, layers, coefs),
    }
    few = subset(prompts, min(4, len(prompts.prompts)))
    for fn in sweep_methods.values():  # warm-up on a few prompts
        fn(few)
    sweep_times, probs = rounds(sweep_methods, args.sweep_repeats)
    sweep_s = {name: statistics.median(v) for name, v in sweep_times.items()}
    loop = probs["per_prompt_loop"]
    diffs = {name: float(np.abs(p - loop).max()) for name, p in probs.items() if name != "per_prompt_loop"}

    def speedup(name):
        return round(sweep_s[name] / sweep_s["shared_prefix"], 2)

    vec_s = {name: statistics.median(v) for name, v in vector_times.items()}
    n_cells = len(layers) * len(coefs)
    result = {
        "device": device_name(model.device), "model": args.model,
        "generation_new_tokens": args.new_tokens, "generation_repeats": args.repeats,
        "generation_plain_tps": round(plain_tps, 2), "generation_steered_tps": round(steered_tps, 2),
        "generation_steered_vs_plain": round(steered_tps / plain_tps, 4),
        "sweep_cells": n_cells, "sweep_prompts": len(pairs), "sweep_layers": layers, "sweep_coefs": coefs,
        "sweep_batch_size": bs, "sweep_repeats": args.sweep_repeats,
        "sweep_s": {name: round(v, 2) for name, v in sweep_s.items()},
        "sweep_times_s": {name: [round(t, 2) for t in v] for name, v in sweep_times.items()},
        "sweep_speedup_vs_hf_batched_per_cell": speedup("hf_batched_per_cell"),
        "sweep_speedup_vs_store_per_cell": speedup("store_per_cell"),
        "sweep_speedup_vs_per_prompt_loop": speedup("per_prompt_loop"),
        "sweep_max_abs_diff_vs_loop": diffs,
        "vectors_pairs": args.vector_pairs, "vectors_repeats": args.vector_repeats,
        "vectors_s": {name: round(v, 2) for name, v in vec_s.items()},
        "vectors_speedup_vs_hf_one_pass": round(vec_s["hf_output_hidden_states_one_pass"] / vec_s["store_one_pass"], 2),
        "vectors_max_abs_diff": vectors_max_diff,
        "layers": model.n_layers,
        "anchors": {
            "shared_prefix": f"interlayer: p_matching_variants over 1 + {n_cells} variants (the unsteered pass, "
                             "which sweep needs for its baseline, then each cell resuming after its layer), "
                             f"stream_variants, batches of {bs}",
            "hf_batched_per_cell": f"AutoModelForCausalLM.model(input_ids, attention_mask) on right-padded batches of "
                                   f"{bs} (sorted by length), one pass per cell with a forward hook adding the "
                                   "vector on the block's output, then the LM head on each prompt's last position",
            "store_per_cell": f"interlayer: p_matching(edits=steer(...).edits()) once per cell, batches of {bs}",
            "per_prompt_loop": "AutoModelForCausalLM(ids, logits_to_keep=1), one prompt per forward, one cell at a "
                               "time, a forward hook adding the vector",
            "store_one_pass": f"interlayer: train_vectors(model, dataset, 'all', n={args.vector_pairs}): one store "
                              "pass reading every layer at each text's last token, batches of 8",
            "hf_output_hidden_states_one_pass": "AutoModelForCausalLM.model(input_ids, attention_mask, "
                                                "output_hidden_states=True) over the same texts, right-padded "
                                                "batches of 8 sorted by length, final norm skipped (the last "
                                                "hidden state is then the last block's output), read at the "
                                                "last token, mean differences",
            "generation": f"model.generate(max_new_tokens={args.new_tokens}, greedy), plain against inside "
                          "steer(model, vector, 2.0, layers=[mid])",
        },
        "notes": "warm-ups on 4 prompts or pairs, then rounds that alternate the methods (the order rotates each "
                 "round); medians. shared_prefix runs the unsteered variant as well (16 variants against 15 cells).",
    }
    print(f"generation tokens/s: plain {plain_tps:.1f}, steered {steered_tps:.1f} "
          f"({100 * (1 - steered_tps / plain_tps):+.1f}% slower)")
    print(f"sweep {len(layers)}x{len(coefs)}x{len(pairs)}: " + ", ".join(f"{k} {v:.1f} s" for k, v in sweep_s.items())
          + f"; shared prefix {speedup('hf_batched_per_cell'):.2f}x the batched HF pass per cell, "
            f"{speedup('per_prompt_loop'):.2f}x the per-prompt loop (max |dP| {diffs})")
    print(f"vectors for {model.n_layers} layers: store {vec_s['store_one_pass']:.2f} s, one HF output_hidden_states "
          f"pass {vec_s['hf_output_hidden_states_one_pass']:.2f} s (max |dv| {vectors_max_diff:.1e})")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
