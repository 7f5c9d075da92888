"""MEXA benchmark: interlayer's batched store path against the cisnlp/Mexa reference and
against a batched Hugging Face body.

Three methods compute the same per-layer scores in this process, on the same model,
sentences and machine, each language embedded once (the pivot included):

* ``interlayer``: ``mexa()`` (the store, ``weighted_mean`` or ``last`` rows at the L+1
  hidden-state sites, batches of ``--batch-size``; the pivot and the languages in one store
  pass, sorted by length together, which pads less than a pass per language);
* ``reference``: cisnlp/Mexa's procedure (``probes/reference.py``,
  ``mexa_reference_languages``): one sentence per forward pass through the CausalLM with
  ``output_hidden_states=True`` (its LM head included, as cisnlp/Mexa runs it), pooled,
  then the rule as loops. Each language is embedded once, as cisnlp/Mexa's
  ``embed_extractor.py`` does;
* ``hf_body_batched``: what a user writes: ``AutoModelForCausalLM.model(**batch,
  output_hidden_states=True)`` on right-padded batches of ``--batch-size`` (no LM head),
  the same pooling, the same vectorised rule.

One warm-up call of each on a few sentences, then ``--repeats`` rounds that alternate the
methods (the order rotates every round); medians. The reference's scores must equal
interlayer's exactly; the batched body's are reported (batching changes rounding).
Writes benchmarks/results/mexa.json with the anchors named. Not a timed test.

    python benchmarks/mexa.py [--langs fra_Latn,deu_Latn,zho_Hans] [--n 100] [--pooling weighted] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import interlayer
from interlayer.probes import mexa
from interlayer.probes.mexa import alignment_scores, load_parallel
from interlayer.probes.reference import mexa_reference_languages

from common import device_name, write_result

PIVOT = "eng_Latn"


def hf_body_embeddings(model, sentences: list[str], pooling: str, batch_size: int) -> torch.Tensor:
    """``[L+1, n, d]``: the HF body's hidden states of right-padded batches, pooled as
    cisnlp/Mexa pools them (``w_t = t`` over the real tokens, BOS included; or the last
    real token)."""
    hf, tok = model.model, model.tokenizer
    side, tok.padding_side = tok.padding_side, "right"
    out = []
    try:
        for start in range(0, len(sentences), batch_size):
            batch = tok(sentences[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
            with torch.no_grad():
                states = hf.base_model(**batch, output_hidden_states=True, use_cache=False).hidden_states
            mask = batch["attention_mask"]
            if pooling == "last":
                last = mask.sum(1) - 1
                weights = torch.zeros_like(mask)
                weights[torch.arange(len(mask)), last] = 1
            else:
                weights = mask * torch.arange(1, mask.shape[1] + 1, device=mask.device).unsqueeze(0)
            weights = weights.unsqueeze(-1).to(states[0].dtype)
            out.append(torch.stack([(h * weights).sum(1) / weights.sum(1) for h in states]).double().cpu())
    finally:
        tok.padding_side = side
    return torch.cat(out, 1)


def hf_body_scores(model, data: dict[str, list[str]], langs: list[str], pooling: str,
                   batch_size: int) -> dict[str, list[float]]:
    """Per-layer scores from :func:`hf_body_embeddings`, every language embedded once."""
    pivot = hf_body_embeddings(model, data[PIVOT], pooling, batch_size)
    return {lang: alignment_scores(pivot, hf_body_embeddings(model, data[lang], pooling, batch_size)) for lang in langs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--langs", default="fra_Latn,deu_Latn,zho_Hans")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--pooling", default="weighted")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "mexa.json"))
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = interlayer.load_model(args.model)
    langs = args.langs.split(",")
    data = load_parallel([PIVOT, *langs], args.n)

    methods = {
        "interlayer": lambda: mexa(model, langs, n=args.n, pooling=args.pooling, batch_size=args.batch_size,
                                   progress=False).scores,
        "reference": lambda: mexa_reference_languages(model, data, langs, args.pooling, PIVOT),
        "hf_body_batched": lambda: hf_body_scores(model, data, langs, args.pooling, args.batch_size),
    }
    few = {lang: sentences[:min(args.n, 4)] for lang, sentences in data.items()}  # warm-up: a few sentences
    mexa(model, langs[:1], n=min(args.n, 4), pooling=args.pooling, batch_size=args.batch_size, progress=False)
    mexa_reference_languages(model, few, langs[:1], args.pooling, PIVOT)
    hf_body_scores(model, few, langs[:1], args.pooling, args.batch_size)

    times = {name: [] for name in methods}
    scores = {}
    names = list(methods)
    for round_ in range(args.repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            t0 = time.perf_counter()
            scores[name] = methods[name]()
            times[name].append(time.perf_counter() - t0)
    median = {name: statistics.median(v) for name, v in times.items()}

    def max_diff(a, b):
        return max(abs(x - y) for lang in langs for x, y in zip(scores[a][lang], scores[b][lang]))

    fast = scores["interlayer"]
    sentences = args.n * (1 + len(langs))
    result = {
        "device": device_name(model.device), "model": args.model, "langs": langs, "n": args.n,
        "pooling": args.pooling, "batch_size": args.batch_size, "sentences": sentences, "repeats": args.repeats,
        "interlayer_s": round(median["interlayer"], 2), "reference_s": round(median["reference"], 2),
        "hf_body_batched_s": round(median["hf_body_batched"], 2),
        "times_s": {name: [round(t, 2) for t in v] for name, v in times.items()},
        "speedup": round(median["reference"] / median["interlayer"], 2),
        "speedup_vs_hf_body_batched": round(median["hf_body_batched"] / median["interlayer"], 2),
        "reference_forward_passes": sentences,
        "scores_identical": all(fast[lang] == scores["reference"][lang] for lang in langs),
        "max_score_diff": max_diff("interlayer", "reference"),
        "hf_body_batched_max_score_diff": max_diff("interlayer", "hf_body_batched"),
        "mean": {lang: sum(v) / len(v) for lang, v in fast.items()},
        "anchors": {
            "interlayer": f"interlayer.probes.mexa(model, langs, n={args.n}, pooling={args.pooling!r}, "
                          f"batch_size={args.batch_size}): store rows at the L+1 hidden-state sites, no LM head; the pivot "
                          "and the languages share store passes (sorted by length together)",
            "reference": "probes/reference.py mexa_reference_languages (cisnlp/Mexa): each language embedded once "
                         f"({sentences} sentences, one AutoModelForCausalLM(**tokens, output_hidden_states=True) "
                         "forward each, LM head included as cisnlp/Mexa runs it), pooled, scored with loops",
            "hf_body_batched": f"AutoModelForCausalLM.model(**batch, output_hidden_states=True) on right-padded "
                               f"batches of {args.batch_size}, no LM head, the same pooling, each language "
                               "embedded once, scored with the same vectorised rule",
        },
        "notes": "one warm-up call of each method on 4 sentences, then rounds alternating the methods (the order "
                 "rotates each round); medians. The previous reference re-embedded the pivot for every language "
                 f"({2 * args.n * len(langs)} forward passes instead of {sentences}).",
    }
    print(f"interlayer {median['interlayer']:.1f}s, reference (each language once) {median['reference']:.1f}s: "
          f"{result['speedup']:.2f}x; batched HF body {median['hf_body_batched']:.1f}s: "
          f"{result['speedup_vs_hf_body_batched']:.2f}x; scores identical to the reference: "
          f"{result['scores_identical']} (max diff {result['max_score_diff']}; batched body "
          f"{result['hf_body_batched_max_score_diff']})")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
