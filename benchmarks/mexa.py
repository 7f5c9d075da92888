"""MEXA benchmark: interlayer's batched store path vs the per-sentence reference.

The reference follows cisnlp/Mexa: one sentence per forward pass with
``output_hidden_states=True`` (logits computed), then the scores. Both run in this
process on the same model, sentences and machine; the scores must be identical.
Writes benchmarks/results/mexa.json. Not a timed test.

    python benchmarks/mexa.py [--langs fra_Latn,deu_Latn,zho_Hans] [--n 100] [--pooling weighted]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import interlayer
from interlayer.probes import mexa
from interlayer.probes.mexa import load_parallel
from interlayer.probes.reference import mexa_reference

from common import device_name, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--langs", default="fra_Latn,deu_Latn,zho_Hans")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--pooling", default="weighted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mexa.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model)
    langs = args.langs.split(",")
    data = load_parallel(["eng_Latn", *langs], args.n)

    t0 = time.perf_counter()
    fast = mexa(model, langs, n=args.n, pooling=args.pooling, batch_size=args.batch_size, progress=False)
    fast_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = {lang: mexa_reference(model, data["eng_Latn"], data[lang], args.pooling) for lang in langs}
    reference_s = time.perf_counter() - t0
    same = all(fast.scores[lang] == reference[lang] for lang in langs)
    max_diff = max(abs(a - b) for lang in langs for a, b in zip(fast.scores[lang], reference[lang]))
    result = {
        "device": device_name(model.device), "model": args.model, "langs": langs, "n": args.n,
        "pooling": args.pooling, "batch_size": args.batch_size, "sentences": args.n * (1 + len(langs)),
        "interlayer_s": round(fast_s, 2), "reference_s": round(reference_s, 2),
        "speedup": round(reference_s / fast_s, 2), "scores_identical": same, "max_score_diff": max_diff,
        "mean": fast.mean,
    }
    print(f"interlayer {fast_s:.1f}s, per-sentence reference {reference_s:.1f}s: {reference_s / fast_s:.1f}x; "
          f"scores identical: {same} (max diff {max_diff})")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
