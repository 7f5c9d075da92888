"""Logit, tuned and Jacobian lenses side by side on the embedded models (CPU-affordable).

For each model: fit a Jacobian lens (interlayer.lens.fit_jacobian_lens) on the first full
contexts of the packaged English sample, train a tuned lens briefly on the next tokens,
and compare the three lenses (interlayer.lens.compare_lenses: mean KL(final || layer) and
next-token CE per layer) on held-out contexts after both. Writes
benchmarks/results/lens_comparison.json. Run under flock on a shared machine:

    flock /tmp/interlayer-torch.lock python -m benchmarks.lens_comparison
"""

from __future__ import annotations

import argparse
import time

import torch

import interlayer
from interlayer import collect
from interlayer.lens import JacobianOptions, LensComparison, compare_lenses, fit_jacobian_lens, train_tuned_lens
from interlayer.lens.tuning import stacked_resid
from interlayer.model.loading import SAMPLE_TEXT

from .common import device_name, write_result

MODELS = ("gemma-3-270m", "smollm2-135m-instruct")
LENGTH = 128


def one_model(name: str, args: argparse.Namespace) -> dict:
    model = interlayer.load_model(name, device="cpu")
    data = str(SAMPLE_TEXT)
    start = time.perf_counter()
    jlens = fit_jacobian_lens(model, data, JacobianOptions(batch_size=1), tokens=args.jacobian_contexts * (LENGTH - 1),
                              context_length=LENGTH, progress=False)
    fit_s = time.perf_counter() - start
    first = args.jacobian_contexts  # the tuned lens trains on the contexts after the Jacobian's, then held out
    train = collect(model, data, "resid_post.*", context_length=LENGTH, skip=first, limit=args.tuned_contexts,
                    progress=False)
    start = time.perf_counter()
    tuned = train_tuned_lens(model, stacked_resid(train, model.n_layers), steps=args.tuned_steps, batch_size=32,
                             lr=1e-3, warmup=5, progress=False)
    tune_s = time.perf_counter() - start
    held_out = collect(model, data, "resid_post.*", context_length=LENGTH, skip=first + args.tuned_contexts,
                       limit=args.eval_contexts, progress=False)
    start = time.perf_counter()
    comparison = compare_lenses(model, [tuned, jlens], held_out)
    eval_s = time.perf_counter() - start
    last = {r["layer"]: r["rel_change"] for r in jlens.convergence if r["batch"] == jlens.convergence[-1]["batch"]}
    return {"model": name, "d_model": model.d_model, "n_layers": model.n_layers,
            "jacobian": {"contexts": jlens.n_contexts, "tokens": jlens.provenance["tokens"],
                         "source_positions": jlens.provenance["source_positions"], "skip_first": 16,
                         "fit_seconds": round(fit_s, 1), "last_rel_change": last},
            "tuned": {"tokens": len(train), "steps": args.tuned_steps, "batch_size": 32, "lr": 1e-3,
                      "train_seconds": round(tune_s, 1)},
            "eval": {"tokens": comparison.n_tokens, "seconds": round(eval_s, 1)},
            "comparison": comparison.to_json()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--jacobian-contexts", type=int, default=3)
    parser.add_argument("--tuned-contexts", type=int, default=16)
    parser.add_argument("--tuned-steps", type=int, default=40)
    parser.add_argument("--eval-contexts", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/lens_comparison.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = [one_model(name, args) for name in args.models]
    write_result(args.out, {"device": device_name(torch.device("cpu")), "context_length": LENGTH,
                            "settings": vars(args), "models": results})
    for result in results:
        frame = LensComparison.from_json(result["comparison"]).to_frame()
        print(result["model"], "\n", frame[[c for c in frame if c.split("_")[0] in ("layer", "kl", "ce")
                                            and not c.endswith(("_low", "_high"))]].round(3).to_string(index=False))


if __name__ == "__main__":
    main()
