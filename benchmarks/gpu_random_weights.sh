#!/usr/bin/env bash
# Superseded by benchmarks/gpu_suite.sh (issue 25: every GPU measurement, Gemma 3 270M's and
# Llama-3.1-8B's configs with random weights, within 8 minutes); kept as its old name.
exec bash "$(dirname "$0")/gpu_suite.sh" "$@"
