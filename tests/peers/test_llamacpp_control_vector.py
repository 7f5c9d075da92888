"""llama.cpp itself applies interlayer's exported control vector where interlayer steers.

A steering vector at resid_post.N of the embedded SmolLM2 is written with to_gguf; llama.cpp
(llama-cpp-python in .venv-llamacpp, `make peers`) reads the file with its own gguf reader
and applies it to the same Q4_1 GGUF that interlayer's model is converted from. The change
of the last-position logits must correlate > 0.99 with interlayer's own injection at
resid_post.N, and clearly less with its injection at blocks N-1 and N+1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from interlayer import load_model
from interlayer.model.loading import EMBEDDED
from interlayer.steering import SteeringVector, to_gguf
from tests.peers.deltas import steered_logit_deltas

ROOT = Path(__file__).resolve().parents[2]
LLAMACPP_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
ALIAS = "smollm2-135m-instruct"
LAYER = 12
PROMPTS = ["The Eiffel Tower is in the city of", "My favourite food is", "Once upon a time, there was a",
           "The weather today is"]

pytestmark = [pytest.mark.peers, pytest.mark.slow, pytest.mark.integration]


def _llama_cpp_logits(tmp_path: Path, vector_path: Path, prompts: list[list[int]]) -> dict[str, np.ndarray]:
    if not LLAMACPP_PY.exists():
        pytest.fail(f"{LLAMACPP_PY} is missing: build llama-cpp-python with `make peers` (mk/peers.mk)")
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "llamacpp.npz"
    subprocess.run([str(LLAMACPP_PY), str(Path(__file__).with_name("llamacpp_apply.py")),
                    str(EMBEDDED[ALIAS].gguf_path()), str(vector_path), str(tmp_path / "prompts.json"), str(out)],
                   check=True, timeout=600)
    return dict(np.load(out))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_llama_cpp_applies_direction_n_where_interlayer_steers_resid_post_n(tmp_path):
    model = load_model(ALIAS)
    ids = [list(model.tokenizer(p).input_ids) for p in PROMPTS]
    g = torch.Generator().manual_seed(0)
    unit = SteeringVector({LAYER: torch.nn.functional.normalize(torch.randn(model.d_model, generator=g), dim=0)})
    with torch.no_grad():
        norm = float(model.model(input_ids=torch.tensor([ids[0]]), output_hidden_states=True)
                     .hidden_states[LAYER + 1][0].norm(dim=-1).median())
    vector = unit * (0.5 * norm)  # half the residual norm at that block: well above Q4_1 noise
    path = to_gguf(vector, tmp_path / "v.gguf", hint="llama")
    theirs = _llama_cpp_logits(tmp_path, path, ids)
    theirs_delta = theirs["steered"] - theirs["base"]

    deltas = {layer: steered_logit_deltas(model, vector[LAYER], layer, ids) for layer in (LAYER - 1, LAYER, LAYER + 1)}
    base_ours = np.stack([model.model(input_ids=torch.tensor([r])).logits[0, -1].detach().double().numpy()
                          for r in ids])
    report = {"noise_rms": float(np.sqrt(((base_ours - theirs["base"]) ** 2).mean())),
              "delta_rms": float(np.sqrt((theirs_delta ** 2).mean()))}
    for layer, delta in deltas.items():
        report[f"corr_{layer}"] = [round(_corr(theirs_delta[i], delta[i]), 4) for i in range(len(ids))]
    print(json.dumps(report), file=sys.stderr)
    assert int(theirs["n_layer"]) == model.n_layers and int(theirs["n_embd"]) == model.d_model
    assert report["delta_rms"] > 5 * report["noise_rms"], report
    for i in range(len(ids)):
        same = _corr(theirs_delta[i], deltas[LAYER][i])
        assert same > 0.99, report
        for neighbour in (LAYER - 1, LAYER + 1):
            assert same - _corr(theirs_delta[i], deltas[neighbour][i]) > 0.02, report
