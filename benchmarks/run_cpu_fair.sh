#!/usr/bin/env bash
# Regenerate the CPU benchmark results whose anchors issue 22 (section 4) corrected:
# benchmarks/results/store.json, store_layer8.json, mexa.json and steering.json.
# Run from the repository root on an otherwise idle machine (nothing else using the
# cores: the figures are tokens/s and seconds), with the embedded models installed
# (gemma-3-270m for the store and MEXA, smollm2-135m-instruct for steering).
#
#   bash benchmarks/run_cpu_fair.sh            # PYTHON=... to use another interpreter
#
# The runtimes are estimates for the 2-core x86 CPU that produced the previous results,
# from the rates in those results (store: 640 tokens/s for the body at every layer,
# 2,100 at layer 8; MEXA: 16 s batched, 100.9 s for 600 per-sentence forwards;
# steering: 33.7 s shared prefix, 58.3 s per cell, 211 s per-prompt loop at 100
# prompts). Total about 22 minutes.
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
RESULTS=benchmarks/results
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
run() { echo "== $*"; local t0=$SECONDS; "$PYTHON" "$@"; echo "   took $((SECONDS - t0)) s"; }

# Every resid_post of Gemma 3 270M, fp32, batch 8 x 128 (as before), 4 batches per timed
# call (4,064 tokens counted, BOS excluded), 3 rounds; 7 methods, TransformerLens with
# its unembedding (it cannot stop before it at every layer). About 6 min.
run benchmarks/store.py --model gemma-3-270m --dtype float32 --batch 8 --seq 128 --batches-per-call 4 \
    --repeats 3 --out "$RESULTS/store.json"

# resid_post.8 only, the same settings; every method stops after block 8. About 2 min.
run benchmarks/store.py --model gemma-3-270m --dtype float32 --batch 8 --seq 128 --batches-per-call 4 \
    --repeats 3 --layer 8 --out "$RESULTS/store_layer8.json"

# MEXA, weighted pooling, 3 languages x 100 FLORES sentences + the English pivot (as
# before), batch 16: interlayer, the cisnlp/Mexa reference (400 per-sentence forwards)
# and the batched HF body, 3 alternating rounds after a warm-up. About 5.5 min.
run benchmarks/mexa.py --model gemma-3-270m --langs fra_Latn,deu_Latn,zho_Hans --n 100 --pooling weighted \
    --batch-size 16 --repeats 3 --out "$RESULTS/mexa.json"

# Steering on SmolLM2-135M-Instruct: vectors for all 30 layers from 64 pairs (3 rounds,
# about 0.6 min), generation of 64 tokens plain against steered (5 rounds, about 1 min),
# and the sweep of layers 13/15/17 x 5 coefficients over 64 prompts (4 full batches of
# 16; was 100, which took 5 min for one round of the four methods), 2 rounds. About 8 min.
run benchmarks/steering.py --model smollm2-135m-instruct --dataset persona:agreeableness --prompts 64 \
    --batch-size 16 --new-tokens 64 --repeats 5 --sweep-repeats 2 --vector-repeats 3 --vector-pairs 64 \
    --out "$RESULTS/steering.json"
