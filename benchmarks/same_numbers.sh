#!/usr/bin/env bash
# Same numbers before and after a refactor: runs a cache, an SAE sweep, a JumpReLU
# `sae train`, steering vectors and a steering sweep, and the quick report on the embedded
# Gemma 3 270M, writing everything under OUT. Run it once on the old code and once on the
# new, then compare the two folders with benchmarks/compare_outputs.py.
#   bash benchmarks/same_numbers.sh OUT [PACKAGE_ROOT]
# PACKAGE_ROOT (optional) is put first on PYTHONPATH: a folder holding an `interlayer/`
# tree of the old code (its core files plus links lens/, saes/, ... to the method folders).
# About 20 minutes on 2 CPU cores. The text is ../shared's WikiText-2 test split.
set -euo pipefail
OUT=$(realpath -m "$1"); ROOT=${2:-}
PY=${PY:-python}
TXT=${TXT:-$(dirname "$0")/../../shared/data/text/wikitext2/wiki.test.raw}
export PYTHONPATH=$ROOT
mkdir -p "$OUT" && cd "$OUT"
$PY -m interlayer cache --model gemma-3-270m --data "$TXT" --sites resid_post.8 --tokens 24000 --out "$OUT/acts" --no-progress
$PY -m interlayer sae sweep --activations "$OUT/acts" --arch topk,relu,jumprelu,batchtopk,topafa \
    --grid "topk=16;relu=0.001;jumprelu=0.003;batchtopk=32;topafa=centred:1/32" --latents 1024 --eval-tokens 2048 \
    --out "$OUT/sweep" --no-progress
$PY -m interlayer sae train --model gemma-3-270m --activations "$OUT/acts" --site resid_post.8 --arch jumprelu \
    --latents 512 --out "$OUT/sae_jr" --no-progress
$PY -m interlayer steer train --model gemma-3-270m --dataset persona:agreeableness --layers 4,6 --method mean_diff \
    --out "$OUT/vec.safetensors"
$PY -m interlayer steer sweep --model gemma-3-270m --dataset persona:agreeableness --vector "$OUT/vec.safetensors" \
    --layers 4,6 --coefs -4,4 --n 16 --out "$OUT/steer_sweep.json"
$PY -m interlayer report --model gemma-3-270m --out "$OUT/report.html" --sae "$OUT/sweep/topk-k16"
