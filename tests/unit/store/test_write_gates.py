"""Write gates: an edit that writes NaN/inf raises naming its site, an edit that changes
nothing warns, and the effect sizes equal a direct computation with plain Hugging Face
forward hooks."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import interlayer
from interlayer import Edit, collect, collect_variants, stream
from interlayer.store.write_gates import NoOpEditWarning, NonFiniteEditError
from tests.tiny_models import make_tiny

IDS = [[1, 5, 9, 13, 17, 21, 25], [1, 30, 31, 32], [1, 7, 8, 9, 10, 11]]


def squash(x: torch.Tensor) -> torch.Tensor:
    """A nonlinear edit, so the change depends on the activation."""
    return 3.0 * torch.tanh(x)


def _layer0(hf):
    return hf.model.layers[0]


def _run(hf, ids, write=None):
    """(hidden after block 0, logits) of one unpadded sequence, ``write`` applied to block 0's output."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = write(hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = _layer0(hf).register_forward_hook(hook) if write is not None else None
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        if handle is not None:
            handle.remove()
    return out.hidden_states[1][0], out.logits[0]


def _direct(pairs):
    """(mean row norm of the change, relative change) over rows (before, after) stacked."""
    before = torch.cat([b for b, _ in pairs])
    after = torch.cat([a for _, a in pairs])
    delta = (after - before).norm(dim=-1)
    return float(delta.mean()), math.sqrt(float((delta ** 2).sum()) / float((before.norm(dim=-1) ** 2).sum()))


@pytest.mark.parametrize("side", ["left", "right"])
def test_effect_sizes_equal_a_direct_computation(side):
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    acts = collect(model, IDS, ["resid_post.2"], edits={"resid_post.0": squash}, batch_size=2, padding_side=side,
                   progress=False)
    effect = acts.edit_effects["resid_post.0"]
    clean = [_run(hf, ids)[0] for ids in IDS]  # rows="all": every real token, BOS included
    mean, relative = _direct([(h, squash(h)) for h in clean])
    assert effect.rows == sum(map(len, IDS))
    assert effect.change_norm == pytest.approx(mean, rel=1e-5)
    assert effect.relative_change == pytest.approx(relative, rel=1e-5)


def test_token_edits_measure_their_rows_and_the_logits():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    direction = torch.randn(model.d_model)
    edit = Edit(lambda rows: squash(rows) + direction, rows="tokens")
    acts = collect(model, IDS, ["resid_post.2"], edits={"resid_post.0": edit}, batch_size=4, progress=False,
                   logit_effects=True)

    def write(hidden):
        out = hidden.clone()
        out[:, 1:] = squash(hidden[:, 1:]) + direction  # the non-BOS tokens
        return out

    site, logits = [], []
    for ids in IDS:
        clean_h, clean_logits = _run(hf, ids)
        _, edited_logits = _run(hf, ids, write)
        site.append((clean_h[1:], squash(clean_h[1:]) + direction))
        logits.append((clean_logits[1:], edited_logits[1:]))
    effect, at_logits = acts.edit_effects["resid_post.0"], acts.edit_effects["logits"]
    assert effect.rows == at_logits.rows == sum(len(ids) - 1 for ids in IDS)
    assert (effect.change_norm, effect.relative_change) == pytest.approx(_direct(site), rel=1e-5)
    assert (at_logits.change_norm, at_logits.relative_change) == pytest.approx(_direct(logits), rel=1e-4)


def test_an_in_place_edit_is_measured_from_its_input():
    model = interlayer.load_model(make_tiny("gpt2"))
    direction = torch.randn(model.d_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoOpEditWarning)
        acts = collect(model, IDS, ["resid_post.1"], edits={"resid_post.0": lambda x: x.add_(direction)},
                       batch_size=3, progress=False)
    effect = acts.edit_effects["resid_post.0"]
    assert effect.change_norm == pytest.approx(float(direction.norm()), rel=1e-5)


def test_nan_raises_naming_the_site_after_the_first_batch():
    model = interlayer.load_model(make_tiny("llama"))
    calls = []

    def poison(x):
        calls.append(1)
        return x * float("nan")

    with pytest.raises(NonFiniteEditError, match=r"the edit at 'resid_post\.1' wrote \d+ NaN/inf"):
        list(stream(model, IDS, ["resid_post.2"], edits={"resid_post.1": poison}, batch_size=1, progress=False))
    assert len(calls) == 1


def test_inf_in_token_rows_raises_naming_the_earliest_site():
    model = interlayer.load_model(make_tiny("gemma3"))
    edits = {"mlp_out.1": Edit(lambda rows: rows + float("inf"), rows="tokens"),
             "resid_post.2": lambda x: x * float("nan")}
    with pytest.raises(NonFiniteEditError, match=r"'mlp_out\.1'"):
        collect(model, IDS, ["resid_post.2"], edits=edits, progress=False)


def test_a_no_op_edit_warns_naming_the_site():
    model = interlayer.load_model(make_tiny("llama"))
    with pytest.warns(NoOpEditWarning, match=r"the edit at 'attn_out\.1' changed nothing"):
        acts = collect(model, IDS, ["resid_post.2"], edits={"attn_out.1": lambda x: x}, progress=False)
    assert acts.edit_effects["attn_out.1"].change_norm == 0.0
    assert acts.edit_effects["attn_out.1"].relative_change == 0.0


def test_clean_runs_have_no_effects_and_variants_their_own():
    model = interlayer.load_model(make_tiny("llama"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoOpEditWarning)
        clean, steered = collect_variants(model, IDS, ["resid_post.2"], [{}, {"resid_post.0": squash}],
                                          batch_size=2, progress=False)
    assert clean.edit_effects == {}
    assert set(steered.edit_effects) == {"resid_post.0"}
    alone = collect(model, IDS, ["resid_post.2"], edits={"resid_post.0": squash}, batch_size=2, progress=False)
    assert steered.edit_effects["resid_post.0"].change_norm == pytest.approx(
        alone.edit_effects["resid_post.0"].change_norm, rel=1e-6)


def test_stream_chunks_carry_the_run_so_far():
    model = interlayer.load_model(make_tiny("llama"))
    chunks = list(stream(model, IDS, ["resid_post.2"], edits={"resid_post.0": squash}, batch_size=1,
                         rows_per_chunk=1, progress=False))
    rows = [c.edit_effects["resid_post.0"].rows for c in chunks]
    assert rows == sorted(rows) and rows[-1] == sum(map(len, IDS))


def test_gates_can_be_turned_off():
    model = interlayer.load_model(make_tiny("llama"))
    acts = collect(model, IDS, ["resid_post.2"], edits={"resid_post.1": lambda x: x * float("nan")},
                   progress=False, check_edits=False, check_padding=False)
    assert acts.edit_effects == {} and bool(acts["resid_post.2"].isnan().any())
