"""An edit with a ``source`` (a transcoder splice through the store) equals a
hand-written two-hook computation: keep one site's activation, write the other's."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer import Edit, collect
from interlayer.errors import InterlayerError
from tests.tiny_models import make_tiny

IDS = [[1, 5, 9, 13, 17, 21, 25], [1, 30, 31, 32], [1, 7, 8, 9, 10, 11]]


def _two_hooks(hf, ids, fn):
    """resid_post.1 (non-BOS rows) with block 1's MLP output replaced by fn(MLP input) off BOS."""
    block, kept = hf.model.layers[1], {}
    pre = block.mlp.register_forward_pre_hook(lambda m, a: kept.__setitem__("x", a[0]))

    def write(module, args, output):
        new = output.clone()
        new[:, 1:] = fn(kept["x"][0, 1:])
        return new

    post = block.mlp.register_forward_hook(write)
    try:
        with torch.no_grad():
            hidden = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        pre.remove()
        post.remove()
    return hidden[2][0, 1:]


@pytest.mark.parametrize("rows", ["tokens", "all"])
def test_edit_with_source_equals_two_hooks(rows):
    hf = make_tiny("llama")
    model = interlayer.ModelAdapter(hf)
    torch.manual_seed(1)
    w = torch.randn(model.d_model, model.d_model) * 0.3
    fn = lambda x: x @ w  # rows="all": the whole [batch, seq, d] source, BOS and padding too
    acts = collect(model, IDS, ["resid_post.1"], edits={"mlp_out.1": Edit(fn, rows=rows, source="mlp_in.1")},
                   batch_size=3, progress=False)
    start = 0
    for ids in IDS:
        n = len(ids) - 1
        if rows == "tokens":
            expected = _two_hooks(hf, ids, fn)
            torch.testing.assert_close(acts["resid_post.1"][start:start + n], expected, atol=1e-4, rtol=1e-4)
        start += n
    clean = collect(model, IDS, ["resid_post.1"], progress=False)
    assert not torch.allclose(acts["resid_post.1"], clean["resid_post.1"], atol=1e-3)


def test_source_after_the_edited_site_is_refused():
    model = interlayer.ModelAdapter(make_tiny("llama"))
    with pytest.raises(InterlayerError, match="earlier site"):
        collect(model, IDS, ["resid_post.1"], edits={"mlp_in.1": Edit(lambda x: x, source="mlp_out.1")},
                progress=False)
    with pytest.raises(InterlayerError, match="earlier site"):
        collect(model, IDS, ["resid_post.1"], edits={"mlp_in.1": Edit(lambda x: x, source="mlp_in.1")},
                progress=False)


def test_resume_layer_accounts_for_the_source():
    from interlayer.store.capture import Capture, check_edits

    model = interlayer.ModelAdapter(make_tiny("llama"))
    edits = check_edits(model, {"mlp_out.2": Edit(lambda x: x, source="resid_pre.1")})
    capture = Capture(model, [model.site("resid_post.2")], torch.float32, 4, False, edits=edits)
    assert capture.resume_layer == 0
