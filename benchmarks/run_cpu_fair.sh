#!/usr/bin/env bash
# Regenerate the CPU benchmark results: store.json, store_layer8.json (issue 22's corrected
# anchors), cache_cpu_all_layers.json, cache_cpu.json, sae_step_cpu.json, topafa_cpu.json, mexa.json and steering.json (issue 25).
# The commands live in benchmarks/__main__.py (`python -m benchmarks --list` prints them); this
# script runs that set. Run from the repository root on an otherwise idle machine (the figures
# are tokens/s and seconds), with the embedded models installed (gemma-3-270m;
# smollm2-135m-instruct for steering). About 40 minutes on the project's 2-core x86 CPU
# (store 6 + 2 min, MEXA 5.5, steering 8, the rest from their own scripts).
#
#   bash benchmarks/run_cpu_fair.sh [--only store,cache]    # PYTHON=... to use another interpreter
set -euo pipefail
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" -m benchmarks --python "$PYTHON" "$@"
