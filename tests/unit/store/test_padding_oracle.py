"""The padding oracle: the first padded batch of a run is checked against one of its
sequences run alone, unpadded; a broken padded path raises naming the architecture and
the site, correct models pass, packed inputs skip it."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import interlayer
from interlayer import collect, stream
from interlayer.model.passes import ForwardPasses
from interlayer.store import guards
from interlayer.store.guards import PaddingMismatchError, padding_tolerance
from tests.tiny_models import make_tiny

IDS = [[1, 5, 9, 13, 17, 21, 25], [1, 30, 31, 32], [1, 7, 8, 9, 10, 11], [1, 40, 41]]
SITES = ["resid_post.0", "attn_out.1", "resid_post.2"]


@pytest.fixture
def checks(monkeypatch):
    """The oracle's comparisons: (relative, worst row, absolute) differences, one per site checked."""
    seen: list[tuple[float, float, float]] = []
    real = guards.row_difference

    def spy(batched, alone):
        seen.append(real(batched, alone))
        return seen[-1]

    monkeypatch.setattr(guards, "row_difference", spy)
    return seen


def _naive_positions(monkeypatch):
    """The classic padding bug: position ids 0..width-1 in every row, padding counted."""
    real = ForwardPasses._model_inputs

    def broken(self, input_ids, attention_mask):
        kwargs = real(self, input_ids, attention_mask)
        if attention_mask is not None:
            width = attention_mask.shape[1]
            kwargs["position_ids"] = torch.arange(width, device=attention_mask.device).expand_as(attention_mask)
        return kwargs

    monkeypatch.setattr(ForwardPasses, "_model_inputs", broken)


def _doubled_positions(monkeypatch):
    """A bug relative position encodings see too: padded rows' positions doubled."""
    real = ForwardPasses._model_inputs

    def broken(self, input_ids, attention_mask):
        kwargs = real(self, input_ids, attention_mask)
        if attention_mask is not None:
            padded = (attention_mask == 0).any(-1, keepdim=True)
            kwargs["position_ids"] = torch.where(padded, kwargs["position_ids"] * 2, kwargs["position_ids"])
        return kwargs

    monkeypatch.setattr(ForwardPasses, "_model_inputs", broken)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_correct_models_pass_and_are_checked(family, side, checks):
    model = interlayer.load_model(make_tiny(family))
    collect(model, IDS, SITES, padding_side=side, batch_size=4, logits=True, progress=False)
    assert len(checks) == len(SITES) + 1  # every site and the logits, once
    tolerance = padding_tolerance(torch.float32, torch.float32, torch.device("cpu"))
    assert all(relative <= tolerance and worst <= 5 * tolerance for relative, worst, _ in checks)
    assert max(worst for _, worst, _ in checks) < 1e-5  # float32 batching noise is far below the tolerance


@pytest.mark.parametrize("select", ["last", "mean", "weighted_mean"])
def test_other_selections_pass(select, checks):
    model = interlayer.load_model(make_tiny("llama"))
    collect(model, IDS, ["resid_post.1"], select=select, padding_side="left", batch_size=4, progress=False)
    assert len(checks) == 1 and max(checks[0][:2]) < 1e-5


def test_positions_selection_passes(checks):
    model = interlayer.load_model(make_tiny("gpt2"))
    positions = [[0, -1], [1], [2, 3], [-2]]
    collect(model, IDS, ["resid_post.1"], select="positions", positions=positions, padding_side="left",
            batch_size=4, progress=False)
    assert len(checks) == 1 and max(checks[0][:2]) < 1e-5


def test_naive_positions_with_absolute_embeddings_raise_naming_the_site(monkeypatch):
    model = interlayer.load_model(make_tiny("gpt2"))
    _naive_positions(monkeypatch)
    with pytest.raises(PaddingMismatchError, match=r"gpt2 at resid_post\.0: sequence 3 padded with 4 of 7 tokens "
                                                   r"on the left") as error:
        collect(model, IDS, ["resid_post.0", "resid_post.2"], padding_side="left", batch_size=4, progress=False)
    reported = float(re.search(r"by up to ([0-9.e+-]+)", str(error.value)).group(1))
    # The same difference computed directly: the broken batched rows of sequence 3 vs the sequence alone.
    batched = collect(model, IDS, ["resid_post.0"], padding_side="left", batch_size=4, progress=False,
                      check_padding=False)
    alone = collect(model, [IDS[3]], ["resid_post.0"], progress=False)
    rows = batched["resid_post.0"][batched.meta["sequence"] == 3]
    assert reported == pytest.approx(float((rows - alone["resid_post.0"]).abs().max()), rel=1e-2)


def test_a_bug_relative_positions_see_raises_naming_llama(monkeypatch):
    model = interlayer.load_model(make_tiny("llama"))
    _doubled_positions(monkeypatch)
    with pytest.raises(PaddingMismatchError, match=r"llama at attn_out\.0"):
        collect(model, IDS, ["resid_post.1", "attn_out.0"], padding_side="right", batch_size=4, progress=False)


def test_the_oracle_checks_the_stream_once(monkeypatch, checks):
    model = interlayer.load_model(make_tiny("llama"))
    chunks = list(stream(model, IDS * 3, ["resid_post.1"], batch_size=2, rows_per_chunk=4, progress=False))
    assert len(chunks) > 1 and len(checks) == 1


def test_it_can_be_turned_off(monkeypatch, checks):
    model = interlayer.load_model(make_tiny("gpt2"))
    _naive_positions(monkeypatch)
    collect(model, IDS, ["resid_post.0"], padding_side="left", batch_size=4, progress=False, check_padding=False)
    opts = interlayer.CollectOptions(padding_side="left", batch_size=4, progress=False, check_padding=False)
    collect(model, IDS, ["resid_post.0"], options=opts)
    assert checks == []


def test_packed_and_equal_length_inputs_skip_it(monkeypatch, checks):
    model = interlayer.load_model(make_tiny("gpt2"))
    _naive_positions(monkeypatch)  # harmless without padding: no error either
    tokens = torch.randint(4, 60, (6, 9))
    collect(model, tokens, ["resid_post.0"], batch_size=4, progress=False)
    ids = [list(map(int, row)) for row in torch.randint(4, 60, (4, 12))]
    collect(model, ids, ["resid_post.0"], context_length=8, limit=4, batch_size=2, progress=False)
    assert checks == []


def test_edited_runs_check_the_sites_before_the_edits_and_run_each_edit_once(monkeypatch, checks):
    model = interlayer.load_model(make_tiny("gpt2"))
    calls = []

    def steer(x):
        calls.append(x.shape[0])
        return x + 1.0

    collect(model, IDS, ["resid_post.0", "resid_post.2"], edits={"resid_post.1": steer}, padding_side="left",
            batch_size=4, progress=False)
    assert len(checks) == 1 and max(checks[0][:2]) < 1e-5  # resid_post.0 only: it comes before the edit
    assert calls == [4]  # the edit ran on the batch, never on the lone row
    _naive_positions(monkeypatch)
    with pytest.raises(PaddingMismatchError, match=r"gpt2 at resid_post\.0"):
        collect(model, IDS, ["resid_post.0", "resid_post.2"], edits={"resid_post.1": steer}, padding_side="left",
                batch_size=4, progress=False)


def test_variants_are_checked_on_their_clean_pass(checks):
    model = interlayer.load_model(make_tiny("llama"))
    interlayer.collect_variants(model, IDS, ["resid_post.0", "resid_post.2"], [{"resid_post.1": lambda x: x + 1}, {}],
                                padding_side="left", batch_size=4, logits=True, progress=False)
    assert len(checks) == 3 and max(relative for relative, *_ in checks) < 1e-5


def test_tolerances_follow_the_dtypes():
    cpu = torch.device("cpu")
    f32 = padding_tolerance(torch.float32, torch.float32, cpu)
    assert f32 == 1e-4
    assert padding_tolerance(torch.float16, torch.float16, cpu) > f32
    assert padding_tolerance(torch.bfloat16, torch.bfloat16, cpu) > padding_tolerance(torch.float16, torch.float16, cpu)
    assert padding_tolerance(torch.float32, torch.bfloat16, cpu) == padding_tolerance(torch.bfloat16, torch.float32, cpu)


def test_row_difference_formulas_and_one_wrong_row():
    torch.manual_seed(0)
    alone = torch.randn(50, 16, dtype=torch.float64)
    batched = alone.clone()
    batched[7] += 0.3 * alone[7]  # one row off by 30%: diluted over the rows, caught per row
    relative, worst, absolute = guards.row_difference(batched, alone)
    a, b = alone.numpy(), batched.numpy()
    assert relative == pytest.approx(np.linalg.norm(b - a) / np.linalg.norm(a), rel=1e-5)
    assert worst == pytest.approx(0.3, rel=1e-5)
    assert absolute == pytest.approx(np.abs(b - a).max(), rel=1e-5)
    tolerance = padding_tolerance(torch.bfloat16, torch.bfloat16, torch.device("cpu"))
    assert relative < tolerance < guards.ROW_FACTOR * tolerance < worst
