#!/usr/bin/env bash
# Builds the folder of wheels that benchmarks/gpu_suite.sh installs on a lent GPU machine
# (which has torch, transformers, pandas, scipy, scikit-learn, pyarrow, ... but no network):
# the peers the benchmarks compare against, at the exact versions installed in .venv
# (nnsight, transformer-lens, sae-lens, eai-sparsify), the two interlayer needs that the
# image lacks (plotly, gguf), and the dependencies those import that the image lacks.
# wandb is not taken (SAELens imports it at module level and never calls it in a timed step;
# the suite puts an empty stand-in module on the path), nor the newer transformers' own
# dependencies (the image's transformers is used). Wheels for CPython 3.12 on x86-64 Linux,
# the machine's. interlayer itself travels as the working tree.
#
#   bash benchmarks/gpu_wheels.sh [DIR]      # default .whl/gpu (ignored by git: /.whl/)
#   PYTHON=.venv/bin/python                  # the environment whose versions are taken
#
# Prints the folder's size: it travels with the working tree (64 MiB in all, the tree itself
# about 7 MiB), named in the device call's carry (".whl").
set -euo pipefail
DIR=${1:-.whl/gpu}
PYTHON=${PYTHON:-.venv/bin/python}
PACKAGES="nnsight transformer-lens sae-lens eai-sparsify plotly gguf
  pydantic pydantic-core annotated-types typing-inspection greenlet googleapis-common-protos
  better-abc datasets dill multiprocess zstandard fancy-einsum beartype typeguard transformers-stream-generator
  docstring-parser natsort schedulefree simple-parsing platformdirs psutil"
mkdir -p "$DIR"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
for name in $PACKAGES; do
    version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    rm -f "$DIR"/"$(echo "$name" | tr - _)"-*.whl
    # shellcheck disable=SC2086
    if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            $PLATFORMS -d "$DIR" "$name==$version" 2>/dev/null; then
        # no wheel on the index (an sdist only): build a pure-Python one here
        "$PYTHON" -m pip wheel -q --no-deps -w "$DIR" "$name==$version"
    fi
    echo "$name==$version"
done
# SmolLM2's tokenizer for benchmarks/scale.py's random checkpoints (the embedded model does not travel)
"$PYTHON" -c "import sys; from transformers import AutoTokenizer; from interlayer.model.loading import ensure_converted
AutoTokenizer.from_pretrained(ensure_converted('smollm2-135m-instruct')).save_pretrained(sys.argv[1])" "$DIR/../tokenizer-smollm2"
ls "$DIR"/*.whl | wc -l | xargs echo "wheels:"
du -sh "$DIR"
