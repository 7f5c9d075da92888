"""repeng 0.4.0 (in .venv-repeng, `make peers`: it needs numpy<2) and interlayer read each
other's llama.cpp control vectors with one layer numbering: repeng's key l, llama.cpp's
direction.l and interlayer's resid_post.l are the output of block l (docs/guide/steering.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from interlayer.steering import SteeringVector, from_gguf, from_repeng, to_gguf

ROOT = Path(__file__).resolve().parents[2]
REPENG_PY = ROOT / ".venv-repeng" / "bin" / "python"

pytestmark = [pytest.mark.peers, pytest.mark.slow]


def test_repeng_reads_our_gguf_and_we_read_its_own(tmp_path):
    if not REPENG_PY.exists():
        pytest.fail(f"{REPENG_PY} is missing: build the repeng environment with `make peers` (mk/peers.mk)")
    g = torch.Generator().manual_seed(0)
    ours = SteeringVector({2: torch.randn(576, generator=g), 7: torch.randn(576, generator=g)}, model="smollm2")
    to_gguf(ours, tmp_path / "ours.gguf", hint="llama")
    subprocess.run([str(REPENG_PY), str(Path(__file__).with_name("repeng_roundtrip.py")), str(tmp_path / "ours.gguf"),
                    str(tmp_path / "theirs.gguf"), str(tmp_path / "out.npz")], check=True, timeout=300)
    out = np.load(tmp_path / "out.npz")
    assert str(out["model_type"]) == "llama"
    assert sorted(int(k.split("_")[1]) for k in out.files if k.startswith("read_")) == [2, 7]  # key l = resid_post.l
    for layer in (2, 7):
        assert np.array_equal(out[f"read_{layer}"], ours[layer].numpy())
    theirs = from_gguf(tmp_path / "theirs.gguf")
    assert theirs.layers == [1, 3] and theirs.model == "llama"
    for layer in (1, 3):
        assert torch.equal(theirs[layer], torch.from_numpy(out[f"made_{layer}"]))
    # the directions dict itself (what ControlVector.directions holds), keys kept as block indices
    made = {layer: out[f"made_{layer}"] for layer in (1, 3)}
    direct = from_repeng(made)
    assert direct.layers == [1, 3] and all(torch.equal(direct[l], theirs[l]) for l in (1, 3))


def test_repeng_control_model_steers_where_interlayer_steers_resid_post_l(tmp_path):
    """repeng's own ControlModel, given our exported file, changes the logits exactly as
    interlayer's steer at resid_post.l (the same float32 model, saved and loaded by each)."""
    import json

    from interlayer import load_model
    from tests.peers.deltas import steered_logit_deltas
    from tests.tiny_models import make_tiny, make_tokenizer

    if not REPENG_PY.exists():
        pytest.fail(f"{REPENG_PY} is missing: build the repeng environment with `make peers` (mk/peers.mk)")
    hf = make_tiny("llama")
    hf.save_pretrained(tmp_path / "model", safe_serialization=True)
    model = load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))
    layer = 1
    g = torch.Generator().manual_seed(1)
    vector = SteeringVector({layer: 2.0 * torch.randn(model.d_model, generator=g)})
    to_gguf(vector, tmp_path / "v.gguf", hint="llama")
    ids = [[1, 5, 9, 13, 21, 8], [1, 40, 41, 7]]
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    subprocess.run([str(REPENG_PY), str(Path(__file__).with_name("repeng_control_model.py")), str(tmp_path / "model"),
                    str(tmp_path / "v.gguf"), str(tmp_path / "ids.json"), str(tmp_path / "out.npz")], check=True,
                   timeout=300)
    theirs = np.load(tmp_path / "out.npz")
    assert theirs["layers"].tolist() == [layer]

    def delta(at: int) -> np.ndarray:
        return steered_logit_deltas(model, vector[layer], at, ids)

    theirs_delta = theirs["steered"] - theirs["base"]
    assert np.abs(theirs_delta).max() > 1e-2  # the control moved the logits
    np.testing.assert_allclose(delta(layer), theirs_delta, atol=1e-4, rtol=1e-4)
    for neighbour in (layer - 1, layer + 1):  # one block off is visibly different
        assert np.abs(delta(neighbour) - theirs_delta).max() > 10 * 1e-4
