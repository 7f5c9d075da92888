"""Evaluating a sweep of SAEs: the shared evaluation against the previous one, side by side.

    python benchmarks/sae_sweep_eval.py [--model gemma-3-270m] [--site resid_post.8] [--members 4]
                                        [--tokens 2048] [--latents 5120] [--device cpu]

* **previous**: what ``evaluate_sae`` did before issue 14, once per SAE: three full
  passes through the store (clean, spliced, zero-ablated) with full-vocabulary logits,
  2 contexts per forward pass.
* **shared**: :func:`interlayer.saes.evaluation.evaluate_saes` on all members: one
  clean pass, one zero-ablated and one spliced pass per member, the latter two running
  only the blocks after the site; logits made in row chunks from the final-norm rows.
* **passes**: the cost of one clean pass with logits and one spliced pass with logits,
  timed alone, so the target "one clean pass plus N spliced passes" (plus the one
  zero-ablated pass the CE-recovered baseline needs) can be checked.

The members are freshly initialised TopK SAEs (k = 32): the evaluation's cost does not
depend on the weights. Their numbers from both paths are compared as well.
Writes benchmarks/results/sae_sweep_eval.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name, write_result  # noqa: E402
import interlayer  # noqa: E402
from interlayer.store.collect import LOGITS, Edit, stream  # noqa: E402
from interlayer.model.loading import SAMPLE_TEXT  # noqa: E402
from interlayer.saes import SAE, SAEConfig  # noqa: E402
from interlayer.saes.evaluation import evaluate_saes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def previous_evaluation(sae, model, data, site, tokens, context_length, batch_size=2):
    """The pre-issue-14 ``evaluate_sae`` loop: three full passes with logits, per SAE."""
    n_contexts = max(1, math.ceil(tokens / (context_length - 1)))
    common = dict(select="tokens", context_length=context_length, batch_size=batch_size, limit=n_contexts,
                  logits=True, progress=False)
    passes = [stream(model, data, site, **common),
              stream(model, data, site, edits={site: Edit(sae.reconstruct, rows="tokens")}, **common),
              stream(model, data, site, edits={site: Edit(torch.zeros_like, rows="tokens")}, **common)]
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    count = 0
    with torch.no_grad():
        for clean, with_sae, with_zero in zip(*passes):
            targets, has_next = clean.next_tokens()
            for name, acts in (("clean", clean), ("sae", with_sae), ("zero", with_zero)):
                logp = torch.log_softmax(acts[LOGITS][has_next], -1)
                sums[name] += float(-logp.gather(-1, targets[has_next, None])[:, 0].double().sum())
            count += int(has_next.sum())
    return {k: v / count for k, v in sums.items()}


def one_pass(model, data, site, tokens, context_length, batch_size, edits=None):
    n_contexts = max(1, math.ceil(tokens / (context_length - 1)))
    start = time.perf_counter()
    for _ in stream(model, data, site, select="tokens", context_length=context_length, batch_size=batch_size,
                    limit=n_contexts, logits=True, progress=False, edits=edits):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--site", default="resid_post.8")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--latents", type=int, default=5120)
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sae_sweep_eval.json"))
    args = parser.parse_args()
    model = interlayer.load_model(args.model, device=args.device)
    data = str(SAMPLE_TEXT)
    saes = [SAE(SAEConfig(d_in=model.d_model, d_sae=args.latents, arch="topk", k=32, site=args.site), seed=i)
            .to(model.device).eval() for i in range(args.members)]

    start = time.perf_counter()
    shared = evaluate_saes(saes, model, data, args.site, tokens=args.tokens, context_length=args.context_length,
                           batch_size=args.batch_size, progress=False)
    shared_s = time.perf_counter() - start

    start = time.perf_counter()
    previous = [previous_evaluation(s, model, data, args.site, args.tokens, args.context_length) for s in saes]
    previous_s = time.perf_counter() - start

    clean_s = one_pass(model, data, args.site, args.tokens, args.context_length, args.batch_size)
    spliced_s = one_pass(model, data, args.site, args.tokens, args.context_length, args.batch_size,
                         edits={args.site: Edit(saes[0].reconstruct, rows="tokens")})
    budget = clean_s + (args.members + 1) * spliced_s
    agreement = max(max(abs(p["sae"] - s.spliced["ce_sae"]), abs(p["zero"] - s.spliced["ce_zero"]),
                        abs(p["clean"] - s.spliced["ce_clean"])) for p, s in zip(previous, shared))
    result = {
        "device": device_name(model.device), "model": model.name, "site": args.site, "members": args.members,
        "latents": args.latents, "tokens": args.tokens, "context_length": args.context_length,
        "shared_seconds": shared_s, "previous_seconds": previous_s, "speedup": previous_s / shared_s,
        "one_clean_pass_seconds": clean_s, "one_spliced_pass_seconds": spliced_s,
        "budget_clean_plus_n_plus_1_spliced_seconds": budget, "shared_over_budget": shared_s / budget,
        "max_abs_ce_difference": agreement, "weights": "freshly initialised TopK SAEs (k=32)",
        "torch": torch.__version__,
    }
    print(json.dumps(result, indent=2))
    write_result(args.out, result)


if __name__ == "__main__":
    main()
