#!/usr/bin/env bash
# The GPU benchmarks (store and SAE) on a lent device machine. The GGUF model packages are
# too big to travel, so the store runs Gemma 3 270M's config with random weights (bf16,
# batch 32 x 512), and the SAE training benchmark a freshly initialised SAE on Gaussian
# inputs. Run from the repository root there; nothing is fetched.
#
# What the machine's image lacks travels as wheels (carry the folders):
#   $WHEELS (default .whl/main): interlayer's own wheel, plotly, and for the store's other
#       anchors transformer-lens 4.3, nnsight and their missing dependencies (an anchor
#       whose import fails is recorded in the result's notes and not timed);
#   .whl/saelens (optional): SAELens 6.54 with transformer-lens 3.9 for the SAE
#       comparison, run in its own subprocess as on the CPU. SAELens imports wandb at
#       module level and never calls it in the timed step; wandb is not in the image, so
#       an empty stand-in module is put on that subprocess's path.
#   .gpu (optional): a trained top-AFA SAE (.gpu/topafa_sel, weights in fp16) and 4,096
#       rows of its cached activations (.gpu/rows_l8.safetensors, fp16), so the selection
#       is timed at a realistic k (see benchmarks/results/sae_gemma_sweep_commands.txt).
#
#   OUT=DIR [WHEELS=DIR] [SAE_TRAIN=0] bash benchmarks/gpu_random_weights.sh
set -uo pipefail
OUT=${OUT:-benchmarks/results}
WHEELS=${WHEELS:-.whl/main}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHEELS"/*.whl || exit 1
SAELENS=--no-saelens
if [ -d .whl/saelens ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-saelens .whl/saelens/*.whl || exit 1
    mkdir -p /tmp/site-saelens/wandb && : > /tmp/site-saelens/wandb/__init__.py
    printf '#!/bin/sh\nPYTHONPATH=/tmp/site-saelens:/tmp/site exec python3 "$@"\n' > /tmp/saelens-python && chmod +x /tmp/saelens-python
    SAELENS="--saelens-python /tmp/saelens-python"
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
LIMIT=150
run() { echo "== $*"; timeout "$LIMIT" "$@" || echo "FAILED ($?): $*"; }
# 16 batches per timed call, so per-call setup is amortised as in a stream; the anchors are
# the HF body (truncated for --layer), the HF body copied .cpu(), nnsight with tracer.stop()
# and TransformerLens with stop_at_layer (see the result's "anchors").
STORE="--random-weights --dtype bfloat16 --batch 32 --seq 512 --batches-per-call 16 --repeats 5 --device cuda"
run python3 benchmarks/store.py $STORE --out "$OUT/store_gpu.json"
run python3 benchmarks/store.py $STORE --layer 8 --out "$OUT/store_layer8_gpu.json"
LIMIT=120
if [ -d .gpu ]; then
    run python3 benchmarks/sae.py --device cuda --sae .gpu/topafa_sel --rows .gpu/rows_l8.safetensors --batch 4096 \
        --rounds 5 --selection-only --out "$OUT/sae_selection_gpu.json"
fi
if [ "${SAE_TRAIN:-1}" = 1 ]; then
    run python3 benchmarks/sae.py --device cuda --batch 4096 --rounds 3 --steps 10 $SAELENS --out "$OUT/sae_gpu.json"
    run python3 benchmarks/sae.py --device cuda --batch 16384 --rounds 3 --steps 10 $SAELENS \
        --out "$OUT/sae_gpu_batch16384.json"
fi
