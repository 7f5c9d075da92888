#!/usr/bin/env bash
# Every GPU measurement of issue 25 in at most $BUDGET seconds (default 480: 8 minutes) on one
# H100 or H200, random weights, bf16. Each step has its own `timeout`, shortened to what is
# left of the budget (a step with under 15 s left is skipped); a failed step is recorded and
# the suite goes on. Steps, most important first:
#   copy            device->host copy of 377 MB into fresh pageable, reused pageable, pinned memory
#   gemma_all       store, all 18 layers, Gemma 3 270M config, 32 x 512, every anchor (to host, on
#                   device, HF body, HF body .cpu(), HF body pinned, nnsight, TransformerLens, limit)
#   gemma_l8        the same for resid_post.8 (the anchors truncated / stopped after block 8)
#   llama_all       Llama-3.1-8B config (made on the GPU), all 32 layers, 8 x 512
#   sae             benchmarks/sae.py --device cuda $SAE_FLAGS (TopK step against sparsify, SAELens)
#   topafa          benchmarks/topafa.py --device cuda $TOPAFA_FLAGS (top-AFA selection + encoder)
#   scale_8b        benchmarks/scale.py, Llama-3.1-8B config (random bf16 weights, built on the host):
#                   peak host RSS and GPU memory of collect/cache (x1, x10), lens logit, sae train
#   gemma_all_compiled, gemma_fit, llama_l8, llama_all_compiled, gemma_l8_compiled
# Writes $RESULTS/gpu_<device>_<step>.json (<device> from nvidia-smi: h200, h100, ...) and
# $RESULTS/gpu_<device>_suite.json (each step's status and seconds); where $OUT is set (the
# device machine), also $OUT/gpu_suite_results.tgz of them and $OUT/gpu_suite.log.
#
# On the device machine, from the repository root, with .whl/gpu built by
# benchmarks/gpu_wheels.sh here and carried (carry: [".whl"]):
#   bash benchmarks/gpu_suite.sh
# Here, on the CPU, a dry run at tiny sizes (writes to /tmp/gpu_suite_dry):
#   DRY_RUN=1 bash benchmarks/gpu_suite.sh          (or DEVICE=cpu)
set -uo pipefail
DEVICE=${DEVICE:-cuda}
DRY_RUN=${DRY_RUN:-0}
[ "$DEVICE" = cpu ] && DRY_RUN=1
[ "$DRY_RUN" = 1 ] && DEVICE=cpu
BUDGET=${BUDGET:-$([ "$DRY_RUN" = 1 ] && echo 5000 || echo 480)}   # the dry run waits for the shared torch lock
ONLY=${ONLY:-}   # space-separated step names: run only these (default: all)
WHEELS=${WHEELS:-.whl/gpu}
# The flags of the SAE and top-AFA steps (other helpers own those scripts: check --help).
SAE_FLAGS=${SAE_FLAGS:-"--batch 4096 --rounds 3 --steps 10"}
TOPAFA_FLAGS=${TOPAFA_FLAGS:-""}
START=$SECONDS
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

if [ "$DRY_RUN" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    RESULTS=${RESULTS:-/tmp/gpu_suite_dry}
    TAG=cpu-dryrun
    LOCK=${LOCK-"flock /tmp/interlayer-torch.lock"}   # one torch process at a time on the shared CPU machine
    G="--batch 2 --seq 16 --batches-per-call 2 --repeats 1"
    L="--batch 2 --seq 16 --batches-per-call 1 --repeats 1"
    GEMMA=llama-tiny; LLAMA=llama-tiny; L8=1; FIT="--fit-batches 1,2 --fit-calls 1,2 --seq 16 --repeats 1"
    SAE_FLAGS=${DRY_SAE_FLAGS:-"--batch 64 --d-in 32 --latents 128 --k 4 --rounds 1 --steps 1 --no-saelens"}
    TOPAFA_FLAGS=${DRY_TOPAFA_FLAGS:-"--batch 64 --fresh-batch 64 --d-in 32 --latents 128 --k 4 --rounds 1 --repeats 1"}
else
    PY=${PYTHON:-python3}
    RESULTS=${RESULTS:-benchmarks/results}
    LOCK=""
    TAG=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr 'A-Z' 'a-z' | sed 's/^nvidia //; s/ .*//')
    G="--dtype bfloat16 --batch 32 --seq 512 --batches-per-call 8 --repeats 3"
    L="--dtype bfloat16 --batch 8 --seq 512 --batches-per-call 2 --repeats 2"
    GEMMA=gemma-3-270m; LLAMA=llama-3.1-8b; L8=8; FIT="--fit-batches 8,32,128 --fit-calls 1,16 --seq 512 --repeats 2"
    # The peers and what they need, from the carried wheels; interlayer from the working tree
    # (copied into one package folder, as pyproject's package-dir maps lens/, saes/, ... into it).
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || echo "wheel install FAILED: the anchors that need them will be recorded as not run"
    mkdir -p /tmp/site-il /tmp/site-stub/wandb && rm -rf /tmp/site-il/interlayer && cp -r interlayer /tmp/site-il/
    for p in lens saes probes steering report; do cp -r "$p" "/tmp/site-il/interlayer/$p"; done
    : > /tmp/site-stub/wandb/__init__.py   # SAELens imports wandb at module level, never calls it here
    export PYTHONPATH=/tmp/site-il:/tmp/site:/tmp/site-stub${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p "$RESULTS"
P="$RESULTS/gpu_${TAG}"
SUMMARY=$(mktemp)
step() {  # step NAME LIMIT_S COMMAND...: run under timeout within the budget, record status and seconds
    local name=$1 limit=$2; shift 2
    if [ -n "$ONLY" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped (${left} s of the budget left)"; printf '%s\tskipped\t0\t%s\n' "$name" "$*" >> "$SUMMARY"; return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most ${limit} s, $((SECONDS - START)) s elapsed): $*"
    local t0=$SECONDS rc
    $LOCK timeout -k 5 "$limit" "$@"; rc=$?
    local status=ok; [ "$rc" != 0 ] && status="failed (rc $rc$([ "$rc" = 124 ] && echo ', timed out'))"
    echo "   $name: $status in $((SECONDS - t0)) s"
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$*" >> "$SUMMARY"
}
{ [ "$DRY_RUN" = 1 ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; } | tee "$P.txt"
$LOCK "$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$P.txt"
S="$PY benchmarks/store.py --device $DEVICE"
COMPILED=limit,store_on_device,store,limit_compiled,limit_compiled_body,store_compiled,store_compiled_to_host
step copy 30 $S --copy-test --repeats 5 --out "${P}_copy.json"
step gemma_all 90 $S --config $GEMMA $G --out "${P}_store_gemma_all.json"
step gemma_l8 70 $S --config $GEMMA $G --layer $L8 --out "${P}_store_gemma_layer8.json"
# TransformerLens's bridge is timed on Gemma; on the 8B it would be one more 16 GB copy with an unmeasured boot.
LLAMA_SKIP=${LLAMA_SKIP:-transformer_lens}
step llama_all 90 $S --config $LLAMA $L --skip "$LLAMA_SKIP" --out "${P}_store_llama8b_all.json"
step sae 70 $PY benchmarks/sae.py --device $DEVICE $SAE_FLAGS --out "${P}_sae.json"
if [ -f benchmarks/topafa.py ]; then
    step topafa 45 $PY benchmarks/topafa.py --device $DEVICE $TOPAFA_FLAGS --out "${P}_topafa.json"
else
    echo "== topafa: benchmarks/topafa.py missing"; printf 'topafa\tmissing\t0\t\n' >> "$SUMMARY"
fi
SCALE=$([ "$DRY_RUN" = 1 ] && echo tiny || echo llama-3.1-8b)
TOKENIZER=$([ -d "$WHEELS/../tokenizer-smollm2" ] && echo "--tokenizer $WHEELS/../tokenizer-smollm2")  # no embedded model there
step scale_8b 200 $PY -m benchmarks.scale --config $SCALE --tasks collect,collect_x10,cache,cache_x10,lens_logit,sae_train \
    --timeout 60 $TOKENIZER --out "${P}_scale_${SCALE}.json"
if [ -d .gpu ]; then  # carried: a trained top-AFA SAE (.gpu/topafa_sel, fp16) and 4,096 of its rows (.gpu/rows_l8.safetensors)
    step sae_selection_trained 40 $PY benchmarks/sae.py --device $DEVICE --sae .gpu/topafa_sel --rows .gpu/rows_l8.safetensors \
        --batch 4096 --rounds 5 --selection-only --out "${P}_sae_selection_trained.json"
fi
step gemma_all_compiled 100 $S --config $GEMMA $G --compile --methods $COMPILED --out "${P}_store_gemma_all_compiled.json"
step gemma_fit 60 $S --config $GEMMA --dtype ${DTYPE:-$([ "$DRY_RUN" = 1 ] && echo float32 || echo bfloat16)} --fit $FIT \
    --out "${P}_store_gemma_all_fit.json"
step llama_l8 60 $S --config $LLAMA $L --layer $L8 --skip "$LLAMA_SKIP" --out "${P}_store_llama8b_layer8.json"
step llama_all_compiled 100 $S --config $LLAMA $L --compile --methods limit,store_on_device,store,limit_compiled,store_compiled \
    --out "${P}_store_llama8b_all_compiled.json"
step gemma_l8_compiled 70 $S --config $GEMMA $G --layer $L8 --compile --methods $COMPILED \
    --out "${P}_store_gemma_layer8_compiled.json"
echo "== total $((SECONDS - START)) s of a $BUDGET s budget"
$LOCK "$PY" - "$SUMMARY" "${P}_suite.json" "$TAG" "$BUDGET" "$((SECONDS - START))" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
steps = [{"step": r[0], "status": r[1], "seconds": int(r[2]), "command": r[3] if len(r) > 3 else ""} for r in rows]
json.dump({"device": sys.argv[3], "budget_s": int(sys.argv[4]), "total_s": int(sys.argv[5]), "steps": steps,
           "failed": [s["step"] for s in steps if s["status"] not in ("ok",)]}, open(sys.argv[2], "w"), indent=2)
print("wrote", sys.argv[2]); [print(f"  {s['step']:22s}{s['status']:28s}{s['seconds']:5d} s") for s in steps]
EOF
rm -f "$SUMMARY"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    tar czf "$OUT/gpu_suite_results.tgz" "$P"*.json "$P.txt" 2>/dev/null && echo "packed into $OUT/gpu_suite_results.tgz"
fi
