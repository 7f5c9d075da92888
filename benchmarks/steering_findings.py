"""Steering findings on the embedded models (README): for persona:agreeableness and
caa:refusal, a raw mean-difference vector (CAA's convention: coefficients are multiples
of the mean difference) trained on the generate split, swept over layers x coefficients on
the held-out split, with a random direction of the same norm and the perplexity cost.

    python benchmarks/steering_findings.py [--models gemma-3-270m,smollm2-135m-instruct]

Writes ``benchmarks/results/steering_<model>_<dataset>.json`` (the sweep schema plus the
vector's norms and the run's settings). Not a timed test.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import interlayer
from interlayer.steering import sweep, train_vectors

from common import device_name, write_result

LAYERS = {"gemma-3-270m": [4, 7, 10, 13], "smollm2-135m-instruct": [6, 12, 18, 24]}
CHAT = {"gemma-3-270m": False, "smollm2-135m-instruct": True}  # SmolLM2 is the instruct model: its chat template
COEFS = [-4.0, -2.0, 2.0, 4.0]
DATASETS = ["persona:agreeableness", "caa:refusal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="gemma-3-270m,smollm2-135m-instruct")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--train-n", type=int, default=200)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--coefs", default=None, help="override the coefficients, e.g. -32,-16,16,32")
    parser.add_argument("--layers", default=None, help="override the layers, e.g. 7,10")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. _wide)")
    args = parser.parse_args()
    out_dir = Path(__file__).parent / "results"
    coefs = [float(c) for c in args.coefs.split(",")] if args.coefs else COEFS
    for name in args.models.split(","):
        model = interlayer.load_model(name, device="cpu")
        layers = [int(l) for l in args.layers.split(",")] if args.layers else LAYERS[name]
        for dataset in args.datasets.split(","):
            began = time.perf_counter()
            vector = train_vectors(model, dataset, layers, normalize=False, n=args.train_n, chat="yes" if CHAT[name] else "no",
                                   progress=False)
            result = sweep(model, vector, dataset, layers, coefs, n=args.n, chat="yes" if CHAT[name] else "no", progress=True)
            payload = result.to_json()
            payload.update({"device": device_name(model.device), "chat_template": CHAT[name], "vector": "mean_diff, raw",
                            "train_pairs": vector.n_pairs, "vector_norms": {str(l): float(vector[l].norm())
                                                                            for l in vector.layers},
                            "seconds": round(time.perf_counter() - began, 1)})
            path = out_dir / f"steering_{name}_{dataset.replace(':', '_')}{args.tag}.json"
            write_result(path, payload)
            print(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(json.dumps(payload["best_cell"]), f"base {result.base:.3f}", f"{payload['seconds']} s")


if __name__ == "__main__":
    main()
