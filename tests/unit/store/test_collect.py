"""The activation store against plain, per-sequence reference computations."""

import json
import gc
import weakref

import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError, UnknownSiteError
from interlayer.store.inputs import EmptyInputError
from interlayer import collect, stream
from tests.tiny_models import make_tiny, make_tokenizer

SEQUENCES = [[1, 5, 6, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14, 15], [1, 16], [1, 17, 18, 19, 20, 21, 22, 23], [1, 24, 25, 26]]


def reference(model, sequences, sites):
    """One sequence per forward pass, no padding: {site: [per-sequence [n, d]]}."""
    out = {s: [] for s in sites}
    for seq in sequences:
        _, acts = model.run(torch.tensor([seq]), read=sites, logits=False)
        for s in sites:
            out[s].append(acts[s][0])
    return out


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_token_rows_equal_per_sequence_passes_for_every_site(tiny_hf, padding_side):
    model = interlayer.load_model(tiny_hf)
    sites = model.sites()
    acts = collect(model, SEQUENCES, sites, batch_size=4, padding_side=padding_side, progress=False)
    ref = reference(model, SEQUENCES, sites)
    frame = acts.to_frame()
    assert len(frame) == sum(len(s) - 1 for s in SEQUENCES)  # BOS excluded
    assert frame.sequence.tolist() == [i for i, s in enumerate(SEQUENCES) for _ in s[1:]]
    assert frame.position.tolist() == [p for s in SEQUENCES for p in range(1, len(s))]
    assert frame.token_id.tolist() == [t for s in SEQUENCES for t in s[1:]]
    for site in sites:
        expected = torch.cat([r[1:] for r in ref[site]])
        torch.testing.assert_close(acts[site], expected, atol=1e-5, rtol=0, msg=site)


def test_tokens_equal_hf_hidden_states():
    hf = make_tiny("gemma3")
    model = interlayer.load_model(hf)
    acts = collect(model, SEQUENCES, ["resid_pre.*", "resid_post.1"], batch_size=3, progress=False)
    for i, seq in enumerate(SEQUENCES):
        hs = hf(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
        rows = torch.tensor((acts.to_frame().sequence == i).to_numpy())
        for layer in range(3):
            torch.testing.assert_close(acts[f"resid_pre.{layer}"][rows], hs[layer][0, 1:], atol=1e-5, rtol=0)
        torch.testing.assert_close(acts["blocks.1.hook_resid_post"][rows], hs[2][0, 1:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["llama", "gpt2", "gemma2"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pooled_selections_equal_plain_pooling(name, padding_side):
    model = interlayer.load_model(make_tiny(name))
    sites = ["resid_pre.0", "resid_post.2"]
    ref = reference(model, SEQUENCES, sites)
    positions = [[0, -1], [1], [0, 2], [-2], [3, 4], [2]]
    got = {sel: collect(model, SEQUENCES, sites, select=sel, positions=positions, batch_size=4,
                        padding_side=padding_side, progress=False)
           for sel in ["last", "mean", "weighted_mean", "positions"]}
    for site in sites:
        per = ref[site]
        # Written plainly: MEXA's weights are 1..n over the sequence, BOS included.
        weighted = torch.stack([(h * torch.arange(1, len(h) + 1)[:, None]).sum(0) / sum(range(1, len(h) + 1)) for h in per])
        torch.testing.assert_close(got["weighted_mean"][site], weighted, atol=1e-5, rtol=0)
        torch.testing.assert_close(got["mean"][site], torch.stack([h.mean(0) for h in per]), atol=1e-5, rtol=0)
        torch.testing.assert_close(got["last"][site], torch.stack([h[-1] for h in per]), atol=1e-5, rtol=0)
        picked = torch.stack([per[i][p] for i, ps in enumerate(positions) for p in ps])
        torch.testing.assert_close(got["positions"][site], picked, atol=1e-5, rtol=0)
    assert got["mean"].to_frame().sequence.tolist() == list(range(len(SEQUENCES)))


def test_pooling_never_holds_every_layer_at_once(monkeypatch):
    model = interlayer.load_model(make_tiny("llama"))
    acts = collect(model, SEQUENCES, "resid_post.*", select="weighted_mean", progress=False)
    assert acts["resid_post.2"].shape == (len(SEQUENCES), 32)  # [n_sequences, d], nothing per token kept


def test_logits_of_selected_rows_equal_the_models():
    hf = make_tiny("gemma2")  # with final-logit soft-capping
    model = interlayer.load_model(hf)
    acts = collect(model, SEQUENCES, ["resid_post.0"], select="last", logits=True, progress=False)
    for i, seq in enumerate(SEQUENCES):
        expected = hf(input_ids=torch.tensor([seq])).logits[0, -1]
        torch.testing.assert_close(acts["logits"][i], expected, atol=1e-5, rtol=0)


def test_pass_stops_after_the_deepest_site_and_unembeds_nothing():
    hf = make_tiny("llama")
    model = interlayer.load_model(hf)
    calls = {"block2": 0, "head": 0}
    h1 = model.blocks[2].register_forward_pre_hook(lambda *a: calls.__setitem__("block2", calls["block2"] + 1))
    h2 = hf.lm_head.register_forward_pre_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    collect(model, SEQUENCES, ["resid_post.0", "mlp_out.1"], progress=False)
    assert calls == {"block2": 0, "head": 0}
    collect(model, SEQUENCES, ["resid_post.2"], progress=False)
    assert calls["block2"] > 0 and calls["head"] == 0
    h1.remove(), h2.remove()


def test_wildcards_and_aliases():
    model = interlayer.load_model(make_tiny("llama"))
    names = [s.name for s in model.expand_sites(["resid_post.*", "blocks.1.hook_mlp_out", "resid_post.0"])]
    assert names == ["resid_post.0", "mlp_out.1", "resid_post.1", "resid_post.2"]
    assert len(model.expand_sites("blocks.*.hook_attn_out")) == 3


def test_bad_input_errors(tmp_path):
    model = interlayer.load_model(make_tiny("llama"))
    with pytest.raises(UnknownSiteError, match="resid_post"):
        collect(model, SEQUENCES, ["resid_psot.1"], progress=False)
    with pytest.raises(UnknownSiteError, match="valid kinds"):
        collect(model, SEQUENCES, ["resid_psot.*"], progress=False)
    with pytest.raises(EmptyInputError, match="no documents"):
        collect(model, [], ["resid_post.1"], progress=False)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(EmptyInputError):
        collect(model, str(tmp_path / "empty.txt"), ["resid_post.1"], progress=False)
    with pytest.raises(InterlayerError, match="'weighted_mean'"):
        collect(model, SEQUENCES, ["resid_post.1"], select="median", progress=False)
    with pytest.raises(TypeError, match="batchsize"):  # explicit keywords: a typo is Python's own error
        collect(model, SEQUENCES, ["resid_post.1"], batchsize=3)
    with pytest.raises(InterlayerError, match="sequence 1 of 3 tokens; valid positions are -3..2"):
        collect(model, SEQUENCES, ["resid_post.1"], select="positions", positions=[[0], [7], [0], [0], [0], [0]], progress=False)
    with pytest.raises(InterlayerError, match="does not exist"):
        collect(model, str(tmp_path / "missing.txt"), ["resid_post.1"], progress=False)


def test_long_sequences_are_truncated_with_a_count():
    model = interlayer.load_model(make_tiny("llama"))
    seqs = [[1] + [5] * 80, [1, 6, 7], [1] + [8] * 70]
    with pytest.warns(UserWarning, match="2 sequence\\(s\\) longer than 64 tokens were truncated"):
        acts = collect(model, seqs, ["resid_post.0"], progress=False)
    assert len(acts) == 63 + 2 + 63


@pytest.fixture
def tiny_text_model(tmp_path):
    hf = make_tiny("llama")
    return interlayer.load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))


def test_every_input_form_gives_the_same_rows(tiny_text_model, tmp_path):
    import datasets
    import pandas as pd

    texts = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13"]
    (tmp_path / "d.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in texts))
    pd.DataFrame({"text": texts}).to_parquet(tmp_path / "d.parquet")
    ids = [tiny_text_model.tokenizer(t).input_ids for t in texts]
    forms = {"list": texts, "txt": str(tmp_path / "d.txt"), "jsonl": str(tmp_path / "d.jsonl"),
             "parquet": str(tmp_path / "d.parquet"), "dataset": datasets.Dataset.from_dict({"text": texts}),
             "ids": ids, "tensor": torch.tensor([ids[0], ids[0]])}
    base = collect(tiny_text_model, texts, ["resid_post.1"], progress=False)
    assert base.to_frame().token_id.tolist() == [5, 6, 7, 8, 9, 10, 11, 12, 13]
    for name, form in forms.items():
        got = collect(tiny_text_model, form, ["resid_post.1"], progress=False)
        if name == "tensor":
            torch.testing.assert_close(got["resid_post.1"][:3], base["resid_post.1"][:3], atol=1e-6, rtol=0)
        else:
            torch.testing.assert_close(got["resid_post.1"], base["resid_post.1"], atol=1e-6, rtol=0, msg=name)


def test_packing_builds_fixed_contexts(tiny_text_model):
    texts = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13"]  # 3 + 2 + 4 tokens, each followed by EOS (w2)
    acts = collect(tiny_text_model, texts, ["resid_post.0"], context_length=5, progress=False)
    frame = acts.to_frame()
    stream_ = [5, 6, 7, 2, 8, 9, 2, 10, 11, 12, 13, 2]
    assert frame.token_id.tolist() == stream_  # BOS heads excluded, nothing lost
    assert frame.sequence.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert frame.position.tolist() == [1, 2, 3, 4] * 3
    assert frame.document.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2]
    # Each context is BOS + 4 stream tokens, run as its own sequence.
    ref = reference(tiny_text_model, [[1] + stream_[i:i + 4] for i in (0, 4, 8)], ["resid_post.0"])["resid_post.0"]
    torch.testing.assert_close(acts["resid_post.0"], torch.cat([r[1:] for r in ref]), atol=1e-5, rtol=0)


def test_stream_chunks_respect_the_memory_budget():
    model = interlayer.load_model(make_tiny("llama"))
    row_bytes = 2 * 32 * 4 + 32
    chunks = list(stream(model, SEQUENCES * 4, ["resid_post.0", "resid_post.2"], batch_size=2,
                         memory_mb=40 * row_bytes / 2**20, progress=False))
    assert len(chunks) > 2 and all(len(c) <= 40 for c in chunks)
    assert sum(len(c) for c in chunks) == 4 * sum(len(s) - 1 for s in SEQUENCES)


def test_rows_left_on_the_model_device_equal_copied_rows_and_never_alias():
    model = interlayer.load_model(make_tiny("llama"))
    sites = ["resid_post.0", "resid_post.2"]
    budget = 40 * (2 * 32 * 4 + 32) / 2**20
    copied = list(stream(model, SEQUENCES * 4, sites, batch_size=2, memory_mb=budget, logits=True, progress=False))
    kept = []
    for chunk in stream(model, SEQUENCES * 4, sites, batch_size=2, memory_mb=budget, logits=True,
                        output_device="model", progress=False):
        kept.append((chunk, {k: v.clone() for k, v in chunk.tensors.items()}))
    assert len(kept) == len(copied) > 2
    for (chunk, snapshot), ref in zip(kept, copied):
        for s in [*sites, "logits"]:
            assert chunk.tensors[s].device == model.device
            torch.testing.assert_close(chunk.tensors[s], ref.tensors[s], atol=0, rtol=0)
        # later chunks were written into fresh buffers, not into this chunk's rows
        for k, v in snapshot.items():
            assert torch.equal(chunk.tensors[k], v)
    ptrs = [chunk.tensors[sites[0]].data_ptr() for chunk, _ in kept]
    assert len(set(ptrs)) == len(ptrs)
    whole = collect(model, SEQUENCES, sites, output_device="model", progress=False)
    torch.testing.assert_close(whole[sites[1]], collect(model, SEQUENCES, sites, progress=False)[sites[1]], atol=0, rtol=0)
    with pytest.raises(InterlayerError, match="output_device='gpu'; valid choices: 'cpu', 'model'"):
        collect(model, SEQUENCES, sites, output_device="gpu", progress=False)


def test_storage_dtype():
    model = interlayer.load_model(make_tiny("llama"))
    full = collect(model, SEQUENCES, ["resid_post.1"], progress=False)
    half = collect(model, SEQUENCES, ["resid_post.1"], storage_dtype="bfloat16", progress=False)
    assert half["resid_post.1"].dtype == torch.bfloat16
    torch.testing.assert_close(half["resid_post.1"], full["resid_post.1"].bfloat16(), atol=0, rtol=0)
    with pytest.raises(InterlayerError, match="'bfloat16'"):
        collect(model, SEQUENCES, ["resid_post.1"], storage_dtype="int8", progress=False)
    with pytest.warns(DeprecationWarning, match="storage_dtype"):  # the old keyword, for one release
        old = collect(model, SEQUENCES, ["resid_post.1"], dtype="bfloat16", progress=False)
    assert torch.equal(old["resid_post.1"], half["resid_post.1"])
    with pytest.raises(InterlayerError, match="not both"):
        collect(model, SEQUENCES, ["resid_post.1"], dtype="bfloat16", storage_dtype="float16", progress=False)


def test_collect_takes_explicit_keywords_or_one_options_object():
    import inspect

    model = interlayer.load_model(make_tiny("llama"))
    for fn in (collect, interlayer.stream, interlayer.collect_variants, interlayer.stream_variants):
        params = inspect.signature(fn).parameters
        assert not any(p.kind is p.VAR_KEYWORD for p in params.values()), fn.__name__
        assert {"select", "batch_size", "storage_dtype", "edits", "limit", "options"} <= set(params)
    a = collect(model, SEQUENCES, ["resid_post.1"], select="last", batch_size=2, progress=False)
    b = collect(model, SEQUENCES, ["resid_post.1"],
                options=interlayer.CollectOptions(select="last", batch_size=2, progress=False))
    assert torch.equal(a["resid_post.1"], b["resid_post.1"]) and len(a) == len(SEQUENCES)
    with pytest.raises(InterlayerError, match="not both.*select"):
        collect(model, SEQUENCES, ["resid_post.1"], select="last", options=interlayer.CollectOptions())


@pytest.mark.parametrize("inputs, says", [
    (None, "inputs is None; give a list of strings"),
    (["a b", None], "input 1 is None .NoneType.; each input must be a string or a list of token ids"),
    ({"a b": 1}, "inputs is a dict .its keys would be read as the texts.; give a list of strings"),
    (3, "inputs of type int are not supported"),
    ([[1, 2], [3, 2.5]], "input 1 holds 2.5 of type float"),
])
def test_wrong_input_types_are_one_line_errors_before_any_pass(monkeypatch, inputs, says):
    model = interlayer.load_model(make_tiny("llama"))
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    for call in (lambda: collect(model, inputs, "resid_post.1", progress=False),
                 lambda: interlayer.stream(model, inputs, "resid_post.1", progress=False),
                 lambda: interlayer.collect_variants(model, inputs, "resid_post.1", [{}], progress=False)):
        with pytest.raises(InterlayerError, match=says) as err:
            call()
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("sites, says", [
    (3, "sites is 3 .int.; give a site name such as 'resid_post.6'"),
    (None, "sites is None .NoneType.; give a site name"),
    (["resid_post.1", 2], "sites holds 2 of type int"),
    ({"resid_post.1": 1}, "sites is .* .dict.; give"),
])
def test_wrong_site_types_are_one_line_errors(monkeypatch, sites, says):
    model = interlayer.load_model(make_tiny("llama"))
    monkeypatch.setattr(model, "forward", lambda *a, **k: pytest.fail("the model ran"))
    with pytest.raises(InterlayerError, match=says):
        collect(model, SEQUENCES, sites, progress=False)
    with pytest.raises(InterlayerError, match=says):
        interlayer.stream(model, SEQUENCES, sites, progress=False)


def test_repeated_collects_do_not_leak():
    model = interlayer.load_model(make_tiny("llama"))
    acts = collect(model, SEQUENCES, "resid_post.*", progress=False)
    ref = weakref.ref(acts["resid_post.1"])
    del acts
    gc.collect()
    assert ref() is None  # nothing inside interlayer keeps results alive
    for _ in range(3):
        collect(model, SEQUENCES, "resid_post.*", progress=False)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)
    assert not model.model._forward_hooks
    tensors_before = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    for _ in range(10):
        collect(model, SEQUENCES, "resid_post.*", progress=False)
    gc.collect()
    tensors_after = sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))
    assert tensors_after <= tensors_before


def test_ln_final_site_equals_hf_last_hidden_state(tiny_hf):
    model = interlayer.load_model(tiny_hf)
    calls = []
    head = model.unembed.register_forward_pre_hook(lambda *a: calls.append(1))
    acts = collect(model, SEQUENCES, ["resid_pre.0", "ln_final.hook_normalized"], select="weighted_mean", progress=False)
    head.remove()
    assert calls == []  # stopped after the final norm: nothing unembedded
    for i, seq in enumerate(SEQUENCES):
        hs = tiny_hf(input_ids=torch.tensor([seq]), output_hidden_states=True).hidden_states
        w = torch.arange(1, len(seq) + 1, dtype=torch.float32)[:, None]
        torch.testing.assert_close(acts["ln_final"][i], (hs[-1][0] * w).sum(0) / w.sum(), atol=1e-5, rtol=0)
        torch.testing.assert_close(acts["resid_pre.0"][i], (hs[0][0] * w).sum(0) / w.sum(), atol=1e-5, rtol=0)


def test_skip_drops_leading_packed_contexts_without_running_them(tiny_text_model):
    texts = ["w5 w6 w7", "w8 w9", "w10 w11 w12 w13", "w14 w15 w16"]
    full = collect(tiny_text_model, texts, ["resid_post.0"], context_length=5, progress=False)
    skipped = collect(tiny_text_model, texts, ["resid_post.0"], context_length=5, skip=1, progress=False)
    keep = full.meta["sequence"] >= 1
    assert torch.equal(skipped["resid_post.0"], full["resid_post.0"][keep])
    with pytest.raises(InterlayerError, match="skip needs packed contexts"):
        collect(tiny_text_model, texts, ["resid_post.0"], skip=1, progress=False)


# ------------------------------------------------------------ tokens= and rows_per_chunk=
@pytest.mark.parametrize("bos", [True, False])
def test_tokens_runs_the_contexts_the_hand_formula_counted(bos):
    """``tokens=N`` runs the contexts each caller computed by hand before: with a BOS
    ``max(1, ceil(N / (L - 1)))`` (each context holds L - 1 text tokens), without one
    ``ceil(N / L)``; the rows are those of ``limit=`` that many contexts."""
    import math

    from interlayer.store import contexts_for_tokens

    hf = make_tiny("llama")
    if not bos:
        hf.config.bos_token_id = None
    model = interlayer.load_model(hf)
    assert (model.bos_token_id is not None) == bos
    docs = [list(range(5, 5 + n)) for n in (7, 3, 11, 5, 9, 6)]  # 41 token ids, no EOS added to id lists
    length = 5
    for tokens in (1, 3, 4, 5, 8, 9, 17, 24):
        hand = max(1, math.ceil(tokens / (length - 1))) if bos else math.ceil(tokens / length)
        assert contexts_for_tokens(model, tokens, length) == hand
        floor = max(1, tokens // (length - 1)) if bos else max(1, tokens // length)  # saes.top_contexts' rule
        assert contexts_for_tokens(model, tokens, length, whole=True) == floor
        got = collect(model, docs, "resid_post.0", context_length=length, tokens=tokens, batch_size=2, progress=False)
        want = collect(model, docs, "resid_post.0", context_length=length, limit=hand, batch_size=2, progress=False)
        assert got.n_sequences == hand and len(got) >= tokens
        assert torch.equal(got["resid_post.0"], want["resid_post.0"])
        assert got.to_frame().equals(want.to_frame())
    # with skip=, the same first contexts of the stream, less those skipped
    skipped = collect(model, docs, "resid_post.0", context_length=length, tokens=17, skip=2, batch_size=2, progress=False)
    assert skipped.meta["sequence"].unique().tolist() == list(range(2, contexts_for_tokens(model, 17, length)))
    with pytest.raises(InterlayerError, match="tokens= needs packed contexts"):
        collect(model, docs, "resid_post.0", tokens=8, progress=False)
    with pytest.raises(InterlayerError, match="no limit="):
        collect(model, docs, "resid_post.0", context_length=length, tokens=8, limit=2, progress=False)
    with pytest.raises(InterlayerError, match="tokens must be an integer of at least 1, got 0"):
        collect(model, docs, "resid_post.0", context_length=length, tokens=0, progress=False)


def test_rows_per_chunk_cuts_chunks_of_exactly_that_many_rows():
    """``rows_per_chunk=`` asks for the rows a ``memory_mb`` round trip used to encode
    (rows -> MiB -> rows); the chunks are the same, and together equal one collect."""
    from interlayer.store.capture import row_bytes

    model = interlayer.load_model(make_tiny("llama"))
    docs = [list(range(5, 5 + n)) for n in (7, 3, 11, 5, 9, 6, 13, 8)]
    sites = ["resid_post.0", "resid_post.2"]
    batch_rows = 2 * (5 - 1)  # two full contexts of 4 text tokens
    kw = dict(context_length=5, batch_size=2, progress=False)
    chunks = list(stream(model, docs, sites, rows_per_chunk=3 * batch_rows, **kw))
    assert [len(c) for c in chunks[:-1]] == [3 * batch_rows] * (len(chunks) - 1) and len(chunks) > 1
    as_mb = 3 * batch_rows * row_bytes(model, len(sites), torch.float32, False) / 2**20
    same = list(stream(model, docs, sites, memory_mb=as_mb, **kw))
    assert [len(c) for c in same] == [len(c) for c in chunks]
    whole = collect(model, docs, sites, **kw)
    for site in sites:
        assert torch.equal(torch.cat([c[site] for c in chunks]), whole[site])
    one_batch = list(stream(model, docs, sites, rows_per_chunk=1, **kw))  # never less than one batch
    assert all(c.n_sequences == 2 for c in one_batch[:-1])
    with pytest.raises(InterlayerError, match="rows_per_chunk must be an integer of at least 1"):
        list(stream(model, docs, sites, rows_per_chunk=0, **kw))
