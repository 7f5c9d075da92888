"""Interventions through the store: ``collect``/``stream`` with ``edits=`` equal a plain
Hugging Face forward hook doing the same write, on every architecture."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer import Edit, collect, stream
from interlayer.errors import InterlayerError
from tests.tiny_models import make_tiny, make_tokenizer

IDS = [[1, 5, 9, 13, 17, 21, 25], [1, 30, 31, 32], [1, 7, 8, 9, 10, 11]]


def _hooked_forward(hf, model, layer_module, write, ids):
    """Logits and the next block's output, with ``write(hidden)`` applied to ``layer_module``'s output."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = write(hidden)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = layer_module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    return out.logits[0], out.hidden_states


def test_edits_equal_a_plain_forward_hook(tiny_hf):
    model = interlayer.load_model(tiny_hf)
    direction = torch.randn(model.d_model)

    def steer(x):
        return x + 2.0 * direction

    acts = collect(model, IDS, ["resid_post.1"], edits={"resid_post.0": steer}, logits=True, batch_size=2,
                   padding_side="left", progress=False)
    for s, ids in enumerate(IDS):
        logits, hidden = _hooked_forward(tiny_hf, model, model.blocks[0], steer, ids)
        rows = acts.meta["sequence"] == s
        positions = acts.meta["position"][rows]
        assert torch.allclose(acts["logits"][rows], logits[positions], atol=1e-4)
        assert torch.allclose(acts["resid_post.1"][rows], hidden[2][0][positions], atol=1e-4)


def test_token_edits_leave_bos_and_padding_alone_and_reads_see_the_edit():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    seen = []

    def zero(x):
        seen.append(x.shape)
        return torch.zeros_like(x)

    acts = collect(model, IDS, ["resid_post.0", "resid_post.1"], edits={"resid_post.0": Edit(zero, rows="tokens")},
                   select="positions", positions=[list(range(len(i))) for i in IDS], padding_side="left",
                   batch_size=3, progress=False)
    assert seen == [(sum(len(i) - 1 for i in IDS), model.d_model)]  # only the real, non-BOS tokens
    bos = acts.meta["position"] == 0
    clean = collect(model, IDS, ["resid_post.0"], select="positions", positions=[list(range(len(i))) for i in IDS],
                    progress=False)
    assert torch.equal(acts["resid_post.0"][~bos], torch.zeros_like(acts["resid_post.0"][~bos]))
    assert torch.allclose(acts["resid_post.0"][bos], clean["resid_post.0"][bos])
    # Direct: zero the block-0 output at non-BOS positions with a plain hook, read block 1.
    for s, ids in enumerate(IDS):
        def write(h):
            out = h.clone()
            out[:, 1:] = 0
            return out

        _, hidden = _hooked_forward(hf, model, hf.model.layers[0], write, ids)
        rows = acts.meta["sequence"] == s
        assert torch.allclose(acts["resid_post.1"][rows], hidden[2][0], atol=1e-5)


def test_streamed_edits_match_collect_and_the_store_runs_no_other_path():
    model = interlayer.load_model(make_tiny("qwen2"))
    fn = Edit(lambda x: 0.5 * x, rows="tokens")
    whole = collect(model, IDS * 4, "mlp_out.1", edits={"attn_out.1": fn}, logits=True, batch_size=2, progress=False)
    chunks = list(stream(model, IDS * 4, "mlp_out.1", edits={"attn_out.1": fn}, logits=True, batch_size=2,
                         memory_mb=0.01, progress=False))
    assert len(chunks) > 1 and sum(c.n_sequences for c in chunks) == len(IDS) * 4
    joined = torch.cat([c["logits"] for c in chunks])
    assert joined.shape == whole["logits"].shape
    only_logits = collect(model, IDS, [], logits=True, progress=False)
    assert only_logits.sites == [] and only_logits["logits"].shape[0] == sum(len(i) - 1 for i in IDS)


def test_bad_edits_are_clear_errors():
    model = interlayer.load_model(make_tiny("llama"))
    with pytest.raises(InterlayerError, match="valid choices: 'all', 'tokens'"):
        Edit(lambda x: x, rows="bos")
    with pytest.raises(InterlayerError, match="a function or an interlayer Edit"):
        collect(model, IDS, "resid_post.0", edits={"resid_post.0": 3}, progress=False)
    with pytest.raises(interlayer.LayerIndexError, match="valid layers are 0..2"):
        collect(model, IDS, "resid_post.0", edits={"resid_post.9": lambda x: x}, progress=False)
    with pytest.raises(InterlayerError, match=r"must return \[14, 32\]"):
        collect(model, IDS, "resid_post.1", edits={"resid_post.0": Edit(lambda x: x[:1], rows="tokens")},
                progress=False)


def test_tokenize_leaves_the_users_tokenizer_as_it_was(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    tok.pad_token = None
    side = tok.padding_side
    model = interlayer.load_model(make_tiny("llama"), tokenizer=tok)
    batch = model.tokenize(["w5 w6 w7", "w8"], padding_side="left")
    assert tok.pad_token is None and tok.padding_side == side
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [2, 2, 1, 8]]  # padded with EOS, on the left
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]


def test_variants_share_the_clean_prefix_and_equal_separate_passes(tiny_hf):
    """collect_variants (each edited pass resumes from the clean pass's block output)
    equals one collect per variant, reads and logits, on every architecture."""
    model = interlayer.load_model(tiny_hf)
    g = torch.Generator().manual_seed(0)
    d1, d2 = torch.randn(model.d_model, generator=g), torch.randn(model.d_model, generator=g)
    last = model.n_layers - 1
    variants = [
        {"resid_post.1": lambda x: x + 3.0 * d1},                       # resumes after block 1
        {},                                                               # the clean pass (records)
        {"resid_pre.0": lambda x: x * 0.5},                               # no prefix to share
        {"mlp_out.1": lambda x: x - 2.0 * d2, "resid_post.2": lambda x: x + d1},  # resumes after block 0
        {"ln_final": lambda x: x * 1.5},                                  # every block replayed
        {"resid_post.0": lambda x: x.add_(d2)},                           # edits in place: the record stays clean
    ]
    sites = [f"resid_post.{last}", "resid_post.1", "resid_pre.2"]
    # reads at resid_post.1 and resid_pre.2 limit how far each variant may resume
    got = interlayer.collect_variants(model, IDS, sites, variants, logits=True, batch_size=2, padding_side="left",
                                      progress=False)
    for variant, acts in zip(variants, got):
        want = collect(model, IDS, sites, edits=variant, logits=True, batch_size=2, padding_side="left", progress=False)
        assert torch.equal(acts.meta["sequence"], want.meta["sequence"])
        for key in [*sites, "logits"]:
            assert torch.allclose(acts[key], want[key], atol=1e-4), (variant.keys(), key)
    # the variants differ from each other (the edits did something)
    assert not torch.allclose(got[0]["logits"], got[1]["logits"], atol=1e-3)


def test_variants_resume_skips_the_prefix_blocks():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    calls = [0] * model.n_layers
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, b in enumerate(model.blocks)]
    try:
        edit = {"resid_post.1": lambda x: x + 1.0}
        interlayer.collect_variants(model, IDS, [], [{}, edit, edit], logits=True, batch_size=8, progress=False,
                                    check_padding=False)  # the padding oracle's lone pass would count too
    finally:
        for h in handles:
            h.remove()
    # pre-hooks fire on skipped blocks too, so count real work through a module inside the block instead
    assert calls == [3, 3, 3]
    inner = [0] * model.n_layers
    handles = [b.mlp.register_forward_hook(lambda m, a, o, i=i: inner.__setitem__(i, inner[i] + 1))
               for i, b in enumerate(model.blocks)]
    try:
        interlayer.collect_variants(model, IDS, [], [{}, edit, edit], logits=True, batch_size=8, progress=False,
                                    check_padding=False)
        interlayer.collect_variants(model, IDS, [], [edit, edit], logits=True, batch_size=8, progress=False,
                                    check_padding=False)
    finally:
        for h in handles:
            h.remove()
    # one batch: the clean pass runs every block, each edited pass only block 2;
    # without a clean variant a prefix-only pass runs blocks 0-1 once
    assert inner == [1 + 1, 1 + 1, 3 + 2]
    with pytest.raises(InterlayerError, match="variants"):
        interlayer.collect_variants(model, IDS, [], [], logits=True, progress=False)
    # edits= with variants is shared by every variant (activation patching's corruption; test_shared_edits.py)
    shared = interlayer.collect_variants(model, IDS, [], [{}], logits=True, edits=edit, progress=False)[0]
    alone = interlayer.collect(model, IDS, [], logits=True, edits=edit, progress=False)
    torch.testing.assert_close(shared["logits"], alone["logits"])
