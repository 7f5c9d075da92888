"""Knowledge-layer decoding benchmark, side by side in one process (not a timed test):
generation tokens/s of LFD, LFD-random and DoLa against greedy, through the same
``interlayer.lens.generate`` (and plain Hugging Face greedy ``generate`` for reference),
on the same NQ prompts, at batch 1 and batch 8, repeats interleaved.

Target: LFD and DoLa at most 1.3x greedy's cost (tokens/s ratio >= 0.77). Every candidate
layer is decoded from the same forward pass, at the last position only, in one head call
per step that also produces the final logits (the model's own unembedding is skipped).

    python benchmarks/knowledge.py [--model smollm2-135m-instruct] [--passage]

Writes ``benchmarks/results/knowledge_<model>.json`` with the device named.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import interlayer
from interlayer.lens.fused_decoding import generate
from interlayer.lens.knowledge_runs import qa_prompts
from interlayer.lens.qa_data import load_qa

from common import device_name, write_result

DECODINGS = ("greedy", "lfd", "lfd-random", "dola")


def rate(fn) -> float:
    """Generated tokens per second of one call."""
    t0 = time.perf_counter()
    tokens = fn()
    return tokens / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--passage", action="store_true", help="open-book prompts (gold passage in the context)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model, device="cpu")
    prompts = qa_prompts(model, load_qa("nq", args.prompts).records, passage=args.passage)

    def ours(decoding: str, batch: int):
        return lambda: sum(len(g.steps) for g in generate(model, prompts[: max(batch, 2) if batch == 1 else batch],
                                                           decoding=decoding, max_new_tokens=args.new_tokens,
                                                           batch_size=batch, progress=False))

    def plain(batch: int):
        def run() -> int:
            items = prompts[: 2 if batch == 1 else batch]
            total = 0
            for start in range(0, len(items), batch):
                enc = model.tokenize(items[start:start + batch], padding_side="left")
                out = model.model.generate(**enc, max_new_tokens=args.new_tokens, do_sample=False,
                                           pad_token_id=model.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                total += int((new != model.pad_token_id).sum())
            return total
        return run

    result = {"device": device_name(model.device), "model": args.model, "passage": args.passage,
              "new_tokens": args.new_tokens, "note": "tokens/s; median of interleaved repeats"}
    for batch in (1, args.prompts):
        for name in DECODINGS:  # warm-up
            ours(name, batch)()
        rates = {name: [] for name in (*DECODINGS, "hf_greedy")}
        for _ in range(args.repeats):
            for name in DECODINGS:
                rates[name].append(rate(ours(name, batch)))
            rates["hf_greedy"].append(rate(plain(batch)))
        med = {k: statistics.median(v) for k, v in rates.items()}
        result[f"batch_{batch}"] = {**{f"{k}_tps": round(v, 2) for k, v in med.items()},
                                    **{f"{k}_vs_greedy": round(med[k] / med["greedy"], 3) for k in DECODINGS[1:]}}
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()) + " tokens/s; "
              + ", ".join(f"{k} {med[k] / med['greedy']:.2f}x greedy's rate" for k in DECODINGS[1:]))
    tag = "open" if args.passage else "closed"
    write_result(Path(__file__).parent / "results" / f"knowledge_{model.name}_{tag}.json", result)


if __name__ == "__main__":
    main()
