"""Knowledge layers: JSD, IKS, LFD and DoLa against direct computations with plain
forward hooks and no KV cache, on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.lens.fused_decoding import DecodingOptions, dola_layers, generate, head_mask, repetition_penalty
from interlayer.lens.knowledge import candidate_layers, jsd, without_answer_sentence
from tests.tiny_models import make_tiny, make_tokenizer

PROMPTS = [[1, 5, 9, 13, 17, 21], [1, 30, 31], [1, 7, 8, 9, 10]]
# the module whose input is resid_mid, per family
MLP_INPUT = {"llama": "post_attention_layernorm", "gemma2": "pre_feedforward_layernorm"}


def _jsd_direct(p: np.ndarray, q: np.ndarray) -> float:
    m = (p + q) / 2
    kl = lambda a: float(np.sum(np.where(a > 0, a * (np.log(np.where(a > 0, a, 1)) - np.log(m)), 0.0)))
    return 0.5 * kl(p) + 0.5 * kl(q)


def test_jsd_symmetric_zero_on_identical_bounded_by_ln2():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 50, generator=g) * 3, torch.randn(5, 50, generator=g) * 3
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    assert torch.allclose(jsd(la, lb), jsd(lb, la))
    assert torch.allclose(jsd(la, la), torch.zeros(5), atol=1e-6)
    for i in range(5):
        assert float(jsd(la, lb)[i]) == pytest.approx(_jsd_direct(la[i].exp().double().numpy(), lb[i].exp().double().numpy()),
                                                      rel=1e-4)
    # disjoint supports reach ln 2; zero-probability tokens are fine
    p = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0]]))
    q = torch.log(torch.tensor([[0.0, 0.0, 0.3, 0.7]]))
    assert float(jsd(p, q)) == pytest.approx(math.log(2), abs=1e-6)
    assert float(jsd(la, lb).max()) <= math.log(2)


def _tiny(name, tmp_path):
    return interlayer.load_model(make_tiny(name), tokenizer=make_tokenizer(tmp_path / "tok"))


def _direct_rows(model, family, ids):
    """resid_mid.l, resid_post.l (every block) and the final logits at the last position
    of ``ids``, from one plain forward with HF hooks (no cache)."""
    hf = model.model
    mid, post = {}, {}
    handles = []
    for l, block in enumerate(hf.model.layers):
        handles.append(getattr(block, MLP_INPUT[family]).register_forward_pre_hook(
            lambda m, a, l=l: mid.__setitem__(l, a[0][0, -1].clone())))
        handles.append(block.register_forward_hook(
            lambda m, a, o, l=l: post.__setitem__(l, (o[0] if isinstance(o, tuple) else o)[0, -1].clone())))
    try:
        with torch.no_grad():
            out = hf(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return mid, post, out.logits[0, -1].double(), [h[0, -1] for h in out.hidden_states]


def _decode_direct(model, h):
    """The model's own head by hand: final norm, lm_head, soft-cap."""
    hf = model.model
    with torch.no_grad():
        z = hf.lm_head(hf.model.norm(h)).double()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    return torch.tanh(z / cap) * cap if cap else z


@pytest.mark.parametrize("family, chunked", [("llama", False), ("gemma2", False), ("llama", True)])
def test_iks_per_step_equals_plain_hooks_without_cache(family, chunked, tmp_path, monkeypatch):
    if chunked:  # two rows of logits per head call: pairs straddle the chunks
        monkeypatch.setattr("interlayer.lens.fused_steps.LOGITS_CHUNK_MB", 1e-9)
    model = _tiny(family, tmp_path)
    layers = list(range(model.n_layers))
    gens = generate(model, PROMPTS, decoding="greedy", record=layers, max_new_tokens=4, batch_size=2, progress=False)
    for prompt, gen in zip(PROMPTS, gens):
        seq = list(prompt)
        assert gen.steps, "no steps recorded"
        for step in gen.steps:
            mid, post, final, _ = _direct_rows(model, family, seq)
            assert step.token == int(final.argmax())
            for l in layers:
                p = torch.softmax(_decode_direct(model, mid[l]), -1).numpy()
                q = torch.softmax(_decode_direct(model, post[l]), -1).numpy()
                assert step.scores[l] == pytest.approx(_jsd_direct(p, q), abs=2e-5), (l, len(seq))
            seq.append(step.token)


def test_lfd_alpha_zero_is_greedy_and_lfd_equals_a_direct_loop(tmp_path):
    model = _tiny("llama", tmp_path)
    greedy = generate(model, PROMPTS, decoding="greedy", max_new_tokens=6, progress=False)
    zero = generate(model, PROMPTS, decoding="lfd", alpha=0.0, candidates=[0, 1, 2], max_new_tokens=6, progress=False)
    assert [g.tokens for g in greedy] == [z.tokens for z in zero]
    alpha, beta = 2.0, 0.1
    lfd = generate(model, PROMPTS, decoding="lfd", alpha=alpha, beta=beta, candidates=[0, 1, 2], max_new_tokens=6,
                   batch_size=3, progress=False)
    for prompt, gen in zip(PROMPTS, lfd):
        seq = list(prompt)
        for step in gen.steps:
            mid, post, final, _ = _direct_rows(model, "llama", seq)
            iks = {}
            for l in (0, 1, 2):
                p = torch.softmax(_decode_direct(model, mid[l]), -1).numpy()
                q = torch.softmax(_decode_direct(model, post[l]), -1).numpy()
                iks[l] = _jsd_direct(p, q)
            star = min(iks, key=iks.get)
            z = final + alpha * _decode_direct(model, post[star])
            pl = torch.softmax(final, -1)
            z[pl < beta * pl.max()] = -math.inf
            assert step.layer == star
            assert step.token == int(z.argmax())
            seq.append(step.token)
    assert any(a.tokens != b.tokens for a, b in zip(lfd, greedy)), "alpha=2 changed nothing: the test shows nothing"


def test_head_mask_and_repetition_penalty():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.06, 0.04, 0.1]]))
    assert head_mask(logits, 0.1).tolist() == [[True, True, True, False, True]]
    assert head_mask(logits, 1.0).tolist() == [[True, False, False, False, False]]
    scores = torch.tensor([[2.0, -1.0, 0.5]])
    out = repetition_penalty(scores, torch.tensor([[0, 1]]), 1.2)
    assert torch.allclose(out, torch.tensor([[2.0 / 1.2, -1.2, 0.5]]))


def test_dola_equals_a_direct_implementation(tmp_path):
    model = _tiny("llama", tmp_path)
    js = [0, 1, 2]
    gens = generate(model, PROMPTS, decoding="dola", dola_layers=js, max_new_tokens=6, batch_size=3, progress=False)
    for prompt, gen in zip(PROMPTS, gens):
        seq = list(prompt)
        for step in gen.steps:
            _, _, final, hidden = _direct_rows(model, "llama", seq)
            logq_n = torch.log_softmax(final, -1)
            # hidden_states[j]: after j blocks (0 = embeddings), decoded through the final norm
            divs = {j: _jsd_direct(logq_n.exp().numpy(), torch.softmax(_decode_direct(model, hidden[j]), -1).numpy())
                    for j in js}
            m = max(divs, key=divs.get)
            scores = logq_n - torch.log_softmax(_decode_direct(model, hidden[m]), -1)
            scores[logq_n < logq_n.max() + math.log(0.1)] = -math.inf
            for t in set(seq):  # repetition penalty 1.2 over the whole sequence
                scores[t] = scores[t] * 1.2 if scores[t] < 0 else scores[t] / 1.2
            assert step.layer == m
            assert step.token == int(scores.argmax())
            seq.append(step.token)


def test_candidates_buckets_and_bad_input(tmp_path):
    model = _tiny("llama", tmp_path)
    assert candidate_layers(model) == [2]
    assert candidate_layers(model, "0,2") == [0, 2]
    with pytest.raises(LayerIndexError, match="0..2"):
        candidate_layers(model, [5])
    with pytest.raises(InterlayerError, match="empty"):
        candidate_layers(model, [])
    assert dola_layers(model, "high") == [1] and dola_layers(model, "low") == [0]
    with pytest.raises(InterlayerError, match="beta"):
        DecodingOptions(decoding="lfd", beta=0)
    with pytest.raises(InterlayerError, match="alpha"):
        DecodingOptions(decoding="lfd", alpha=-1)
    with pytest.raises(InterlayerError, match="greedy"):
        DecodingOptions(decoding="beam")
    with pytest.raises(LayerIndexError, match="0..2"):
        generate(model, "w5 w6", decoding="lfd", layer=7, progress=False)


def test_without_answer_sentence():
    text = "Paris is big. The tower is in Paris! It is tall."
    assert without_answer_sentence(text, ["tower"]) == "Paris is big. It is tall."
    assert without_answer_sentence(text, ["London"]) is None


def _qa_file(tmp_path):
    """A word-level QA set the tiny tokenizer reads: answers are words of the passage."""
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"w{5 + i} w{6 + i}", "answers": [f"w{20 + i}"], "passage": f"w{20 + i} w{30 + i} w{40 + i}."}
            for i in range(6)]
    rows.append({"question": "w9 w9"})  # no answer: skipped and counted
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_evaluate_qa_scores_every_decoding_and_resumes(tmp_path):
    from interlayer.lens.qa import evaluate_qa
    from interlayer.lens.qa_metrics import answer_contained, exact_match, first_answer_span

    model = _tiny("llama", tmp_path)
    data = str(_qa_file(tmp_path))
    progress = tmp_path / "run.progress.jsonl"
    opts = DecodingOptions(candidates=[0, 1, 2], alpha=1.0)
    result = evaluate_qa(model, data, 10, options=opts, noise_docs=1, chat=False, max_new_tokens=3, batch_size=4,
                         progress_file=progress, progress=False)
    assert result.n == 6 and result.skipped == 1
    assert result.settings["start"] == 0  # the argument (it once held the last batch's offset, 4)
    assert [(s.method, s.setting) for s in result.scores] == [(m, s) for m in ("greedy", "lfd", "dola", "lfd-random")
                                                             for s in ("closed_book", "open_book")]
    # the scores equal a direct count over the stored predictions
    for s in result.scores:
        preds = [e["predictions"][f"{s.method}/{s.setting}"] for e in result.examples]
        answers = [e["answers"] for e in result.examples]
        assert s.exact_match == pytest.approx(np.mean([exact_match(p, a) for p, a in zip(preds, answers)]))
        assert s.contained == pytest.approx(np.mean([answer_contained(first_answer_span(p), a)
                                                     for p, a in zip(preds, answers)]))
    # greedy predictions equal generate() on the same prompts
    from interlayer.lens.qa import qa_prompt
    from interlayer.lens.qa_data import load_qa

    records = load_qa(data).records
    direct = generate(model, [qa_prompt(model, r, None, chat=False) for r in records], decoding="greedy",
                      max_new_tokens=3, stop_at_newline=True, progress=False)
    assert [first_answer_span(g.text) for g in direct] == [e["predictions"]["greedy/closed_book"] for e in result.examples]
    # a rerun resumes from the progress file without generating
    assert progress.is_file()
    import interlayer.lens.qa as qa_module

    calls = []
    real = qa_module.generate
    qa_module.generate = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = evaluate_qa(model, data, 10, options=opts, noise_docs=1, chat=False, max_new_tokens=3, batch_size=4,
                            progress_file=progress, progress=False)
    finally:
        qa_module.generate = real
    assert calls == [] and again.to_json()["results"] == result.to_json()["results"]
    # the journal is this run's: other settings are refused, naming them
    from interlayer.io.journal import JournalError

    with pytest.raises(JournalError, match=r"max_new_tokens: 3 there, 4 here"):
        evaluate_qa(model, data, 10, options=opts, noise_docs=1, chat=False, max_new_tokens=4, batch_size=4,
                    progress_file=progress, progress=False)


def test_knowledge_commands(tmp_path, capsys, caplog):
    from interlayer.cli import dispatch as cli

    ckpt = tmp_path / "ckpt"
    make_tiny("llama").save_pretrained(ckpt)
    make_tokenizer(ckpt)
    data = str(_qa_file(tmp_path))
    out = tmp_path / "iks.json"
    assert cli.main(["lens", "iks", "--model", str(ckpt), "--dataset", data, "--n", "4", "--candidates", "0,1,2",
                     "--max-new-tokens", "2", "--out", str(out), "--figures", str(tmp_path / "iks.html"),
                     "--no-progress"]) == 0
    payload = json.loads(out.read_text())
    assert set(payload) >= {"model", "n", "iks", "layer", "candidates", "selected_histogram"}
    assert len(payload["iks"]) == 3 and payload["candidates"] == [0, 1, 2] and payload["n"] == 4
    assert payload["layer"] in (0, 1, 2) and sum(payload["selected_histogram"].values()) == payload["steps"]
    assert "<script" in (tmp_path / "iks.html").read_text()
    assert cli.main(["lens", "iks", "--model", str(ckpt), "--dataset", data, "--n", "2", "--no-passage", "--select", "example",
                     "--out", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["steps"] == 2 and json.loads(out.read_text())["passage"] is False
    capsys.readouterr()
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--decoding", "lfd", "--candidates", "0,1,2", "--alpha", "1",
                     "--max-new-tokens", "3", "--json", "--prompt", "w5 w6 w7"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert gen["decoding"] == "lfd" and all(s["layer"] in (0, 1, 2) for s in gen["steps"])
    # --out writes what --json prints; one prompt loads as a Generation, several as a list of them
    from interlayer.lens import Generation

    one, two = tmp_path / "gen.json", tmp_path / "gens.json"
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--decoding", "lfd", "--candidates", "0,1,2", "--alpha", "1",
                     "--max-new-tokens", "3", "--prompt", "w5 w6 w7", "--out", str(one)]) == 0
    loaded = Generation.load(one)
    assert (loaded.text, loaded.decoding, [s.layer for s in loaded.steps]) == \
        (gen["text"], "lfd", [s["layer"] for s in gen["steps"]])
    assert [g.to_json() for g in Generation.load_all(one)] == [loaded.to_json()]
    capsys.readouterr()
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--decoding", "dola", "--max-new-tokens", "3", "--json",
                     "--prompt", "w5 w6 w7", "--prompt", "w8 w9", "--out", str(two)]) == 0
    printed = json.loads(capsys.readouterr().out)
    both = Generation.load_all(two)
    assert [g.text for g in both] == [p["text"] for p in printed] and len(both) == 2
    assert [g.tokens for g in both] == [p["tokens"] for p in printed] and both[0].decoding == "dola"
    with pytest.raises(InterlayerError, match="not a saved Generation"):
        Generation.load(two)
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--prompt", "w5", "--out", str(tmp_path / "g.csv")]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["lens", "qa", "--model", str(ckpt), "--dataset", data, "--n", "3", "--decoding", "greedy,dola",
                     "--max-new-tokens", "2", "--out", str(tmp_path / "qa.json"), "--no-progress"]) == 0
    qa = json.loads((tmp_path / "qa.json").read_text())
    assert qa["decodings"] == ["greedy", "dola"] and len(qa["results"]) == 4 and qa["skipped"] == 0
    from interlayer.lens import QAResult

    assert QAResult.load(tmp_path / "qa.json").to_json() == qa  # what the command wrote opens in Python
    assert not (tmp_path / "qa.json.progress.jsonl").exists()
    capsys.readouterr()
    # --figures writes the QA figure; a record without an answer is said once (the warning on stderr)
    caplog.clear()
    assert cli.main(["lens", "qa", "--model", str(ckpt), "--dataset", data, "--n", "10", "--decoding", "greedy",
                     "--max-new-tokens", "2", "--figures", str(tmp_path / "qa.html"), "--no-progress"]) == 0
    assert "<script" in (tmp_path / "qa.html").read_text()
    printed = capsys.readouterr()
    assert "records without an answer skipped" not in printed.out + printed.err  # not a second line besides the warning
    assert sum("skipped" in r.getMessage() for r in caplog.records if r.levelname == "WARNING") == 1
    # bad input: one line, exit 2, before any model work
    assert cli.main(["lens", "qa", "--model", str(ckpt), "--dataset", "trivia", "--n", "3"]) == 2
    assert "not one of 'nq', 'squad', 'known'" in capsys.readouterr().err
    assert cli.main(["lens", "qa", "--model", str(ckpt), "--dataset", data, "--decoding", "greedy,beam"]) == 2
    assert "unknown decoding 'beam'" in capsys.readouterr().err
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--decoding", "lfd", "--beta", "0", "--prompt", "w5"]) == 2
    assert "--beta" in capsys.readouterr().err
    assert cli.main(["lens", "generate", "--model", str(ckpt), "--decoding", "lfd", "--layer", "9", "--prompt", "w5"]) == 2
    assert "0..2" in capsys.readouterr().err
    assert cli.main(["lens", "iks", "--model", str(ckpt), "--dataset", data, "--candidates", "", "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err


def test_a_row_stops_at_its_eos_or_first_newline():
    from types import SimpleNamespace

    from interlayer.lens.fused_decoding import Step, _until_stop

    vocab = {1: "a", 2: "b\n", 3: "c", 9: "<eos>"}
    tok = SimpleNamespace(decode=lambda ids, skip_special_tokens=True: "".join(vocab[i] for i in ids if i != 9))
    model = SimpleNamespace(tokenizer=tok)
    steps = [Step(t) for t in (1, 2, 3, 9, 1)]
    assert [s.token for s in _until_stop(model, steps, {9}, stop_at_newline=True)] == [1, 2]
    assert [s.token for s in _until_stop(model, steps, {9}, stop_at_newline=False)] == [1, 2, 3, 9]


def test_sim_hidden_equals_plain_hooks_on_the_mlp(tmp_path):
    from interlayer.lens.knowledge import sim_hidden

    model = _tiny("llama", tmp_path)
    with_ctx, without_ctx = [[1, 5, 9, 13, 17, 21], [1, 30, 31, 32]], [[1, 5, 13, 21], [1, 30, 32]]
    res = sim_hidden(model, with_ctx, without_ctx, progress=False)

    def mlp_last(ids):
        out = {}
        handles = [b.mlp.register_forward_hook(lambda m, a, o, l=l: out.__setitem__(l, o[0, -1].clone()))
                   for l, b in enumerate(model.model.model.layers)]
        try:
            with torch.no_grad():
                model.model(torch.tensor([ids]))
        finally:
            for h in handles:
                h.remove()
        return out

    for i, (a, b) in enumerate(zip(with_ctx, without_ctx)):
        ma, mb = mlp_last(a), mlp_last(b)
        direct = [float(torch.nn.functional.cosine_similarity(ma[l], mb[l], dim=0)) for l in range(model.n_layers)]
        assert res.values[i] == pytest.approx(direct, abs=1e-5)
    assert res.layers == [0, 1, 2] and len(res.mean) == 3


def test_cosine_iks_per_step_equals_plain_hooks(tmp_path):
    """The cosine IKS hooks the resid_mid states it compares (it decodes none of them)."""
    model = _tiny("llama", tmp_path)
    layers = list(range(model.n_layers))
    gens = generate(model, PROMPTS, decoding="greedy", record=layers, metric="cosine", max_new_tokens=3, progress=False)
    for prompt, gen in zip(PROMPTS, gens):
        seq = list(prompt)
        assert gen.steps, "no steps recorded"
        for step in gen.steps:
            mid, post, _, _ = _direct_rows(model, "llama", seq)
            for l in layers:
                direct = 1.0 - float(torch.nn.functional.cosine_similarity(mid[l], post[l], dim=0))
                assert step.scores[l] == pytest.approx(direct, abs=1e-5), (l, len(seq))
            seq.append(step.token)


def test_iks_is_one_function(tmp_path):
    """iks_scores (states in, one head call) and iks (decoded logits in) are the same numbers."""
    from interlayer.decoding import LayerDecoder
    from interlayer.lens.knowledge import iks, iks_scores

    model = _tiny("llama", tmp_path)
    g = torch.Generator().manual_seed(0)
    mid, post = torch.randn(3, 4, model.d_model, generator=g), torch.randn(3, 4, model.d_model, generator=g)
    decoder = LayerDecoder(model)
    values, post_logits = iks_scores(decoder, mid, post, [0, 1, 2], keep_post_logits=True)
    logits = decoder.layer_logits(torch.cat([mid, post]), [0, 1, 2, 0, 1, 2])
    assert torch.equal(values, iks(logits[:3], logits[3:], "jsd")) and torch.equal(post_logits, logits[3:])
    assert values.shape == (3, 4) and float(values.max()) <= math.log(2)
    assert torch.equal(iks_scores(decoder, mid, post, [0, 1, 2], "cosine"), iks(mid, post, "cosine"))
