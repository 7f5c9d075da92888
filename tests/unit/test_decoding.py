"""LayerDecoder against direct, unchunked computations."""

import pytest
import torch

import interlayer
from interlayer.decoding import LayerDecoder
from tests.tiny_models import make_tiny


@pytest.fixture(params=["gemma2", "llama", "gpt2"])
def states(request):
    model = interlayer.load_model(make_tiny(request.param))
    ids = torch.randint(5, 60, (1, 9))
    logits, acts = model.run(ids, read=[f"resid_post.{l}" for l in range(model.n_layers)])
    hidden = torch.stack([acts[f"resid_post.{l}"][0] for l in range(model.n_layers)])  # [L, n, d]
    return model, hidden, logits[0]


def _direct(model, hidden):
    logits = model.unembed_resid(hidden).detach().float()
    return torch.log_softmax(logits, -1)


def test_final_layer_reproduces_model_logits(states):
    model, hidden, logits = states
    dec = LayerDecoder(model)
    torch.testing.assert_close(dec.logits(hidden[-1]), logits, atol=1e-5, rtol=0)
    got = dec.decode(hidden[-1:], probs=True).probs[0]
    torch.testing.assert_close(got, torch.softmax(logits, -1), atol=1e-6, rtol=0)


@pytest.mark.parametrize("memory_mb", [1e-4, 0.001, 256.0])
def test_decode_matches_direct_computation_in_any_chunking(states, memory_mb):
    model, hidden, _ = states
    ids = [3, 7, 7, 50]
    dec = LayerDecoder(model, memory_mb=memory_mb)
    targets = torch.randint(0, model.vocab_size, (hidden.shape[1],))
    out = dec.decode(hidden, top_k=5, entropy=True, reference=hidden[-1], token_ids=ids, probs=True, targets=targets,
                     ranks=True)
    logp = _direct(model, hidden)
    p = logp.exp()
    ref = logp[-1]
    values, indices = torch.topk(logp, 5, dim=-1)
    assert torch.equal(out.top_ids, indices)
    torch.testing.assert_close(out.top_probs, values.exp(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.entropy, -(p * logp).sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.kl_to_final, (ref.exp() * (ref - logp)).sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.token_logprobs, logp[..., ids], atol=1e-6, rtol=0)
    torch.testing.assert_close(out.target_logprobs, logp[:, torch.arange(len(targets)), targets], atol=1e-6, rtol=0)
    ranks = (logp.unsqueeze(-2) > logp[..., ids].unsqueeze(-1)).sum(-1)
    assert torch.equal(out.token_ranks, ranks)
    torch.testing.assert_close(out.set_logprob, torch.log(p[..., ids].sum(-1)), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.probs, p, atol=1e-6, rtol=0)
    assert out.kl_to_final[-1].abs().max() < 1e-5  # the final layer against itself
    if memory_mb < 0.01:
        assert out.n_chunks > model.n_layers  # really split


def test_chunks_stay_within_the_memory_bound():
    model = interlayer.load_model(make_tiny("llama"))
    for memory_mb in (0.01, 0.1, 1.0):
        dec = LayerDecoder(model, memory_mb=memory_mb)
        rows = dec.rows_per_chunk(with_reference=True)
        assert rows * model.vocab_size * 4 * 6 <= memory_mb * 2**20 or rows == 1
        assert (rows + 1) * model.vocab_size * 4 * 6 > memory_mb * 2**20


def test_arbitrary_leading_dimensions():
    model = interlayer.load_model(make_tiny("qwen3"))
    hidden = torch.randn(2, 3, 4, model.d_model)
    out = LayerDecoder(model, memory_mb=0.001).decode(hidden, top_k=2, entropy=True)
    assert out.top_ids.shape == (2, 3, 4, 2) and out.entropy.shape == (2, 3, 4)
    assert torch.equal(out.top_ids, torch.topk(_direct(model, hidden), 2, -1).indices)


def test_bad_input_errors():
    model = interlayer.load_model(make_tiny("llama"))
    dec = LayerDecoder(model)
    with pytest.raises(ValueError, match="d_model=32"):
        dec.decode(torch.randn(3, 16))
    with pytest.raises(ValueError, match=r"0\.\.64"):
        dec.decode(torch.randn(3, 32), top_k=65)
    with pytest.raises(ValueError, match=r"0\.\.63"):
        dec.decode(torch.randn(3, 32), token_ids=[64])
    with pytest.raises(ValueError, match="reference must have shape"):
        dec.decode(torch.randn(2, 3, 32), reference=torch.randn(4, 32))
    with pytest.raises(ValueError, match="positive"):
        LayerDecoder(model, memory_mb=0)


def test_never_decodes_more_rows_at_once_than_the_bound(monkeypatch):
    model = interlayer.load_model(make_tiny("llama"))
    dec = LayerDecoder(model, memory_mb=0.004)  # a few rows of a 64-token vocabulary
    seen = []
    real = LayerDecoder.log_probs

    def spy(self, hidden, layer=None):
        seen.append(hidden.shape[0])
        return real(self, hidden, layer)

    monkeypatch.setattr(LayerDecoder, "log_probs", spy)
    hidden = torch.randn(3, 50, model.d_model)  # 150 (layer, position) rows
    dec.decode(hidden, top_k=1, entropy=True, reference=hidden[-1])
    limit = dec.rows_per_chunk(with_reference=True)
    assert 1 < limit < 50 and max(seen) <= limit
    assert sum(seen) == 150  # every row once (reference rows are decoded once per chunk, beside these)


def test_the_lens_contract():
    """Any object with a name and transform(hidden, layer) is a lens; the logit lens is the default."""
    from interlayer import LayerDecoder, Lens, LogitLens
    from interlayer.lens import TunedLens

    model = interlayer.load_model(make_tiny("llama"))
    hidden = torch.randn(3, 5, model.d_model)
    plain = LayerDecoder(model)
    assert isinstance(plain.lens, LogitLens) and isinstance(plain.lens, Lens)

    class Scaled:
        name = "scaled"

        def transform(self, h, layer):
            return h * (layer + 1)

    scaled = LayerDecoder(model, lens=Scaled()).decode(hidden, top_k=3, layers=[0, 1, 2])
    direct = torch.stack([torch.log_softmax(model.unembed_resid(hidden[l] * (l + 1)).float(), -1) for l in range(3)])
    assert torch.equal(scaled.top_ids, direct.topk(3, dim=-1).indices)
    with pytest.raises(interlayer.InterlayerError, match="a Lens"):
        LayerDecoder(model, lens=object())
    tuned = TunedLens.for_model(model)
    with pytest.raises(interlayer.InterlayerError, match="needs the layer of each hidden state"):
        LayerDecoder(model, lens=tuned).decode(hidden, top_k=1)
    # an untrained tuned lens decodes exactly as the logit lens
    same = LayerDecoder(model, lens=tuned).decode(hidden[:2], top_k=2, layers=[0, 1])
    assert torch.equal(same.top_ids, plain.decode(hidden[:2], top_k=2).top_ids)


def test_the_gradient_path_trains_through_the_frozen_head():
    from interlayer import LayerDecoder
    from interlayer.lens import TunedLens

    model = interlayer.load_model(make_tiny("llama"))
    lens = TunedLens.for_model(model)
    decoder = LayerDecoder(model, lens=lens)
    hidden = torch.randn(4, model.d_model)
    assert decoder.log_probs(hidden, 0).grad_fn is None
    loss = decoder.log_probs(hidden, 0, grad=True)[:, 5].sum()
    loss.backward()
    assert lens.translators["0"].weight.grad is not None and lens.translators["0"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_from_normed_is_the_head_with_its_soft_cap(arch):
    model = interlayer.load_model(make_tiny(arch))
    if arch == "gemma2":
        assert model.logit_softcap is not None  # the soft-capped architecture
    hidden = torch.randn(3, 7, model.d_model)
    normed = model.final_norm(hidden)
    direct = model.unembed_resid(hidden).detach().float()
    for memory_mb in (0.001, 256.0):  # a chunk of one row, and all rows at once
        got = LayerDecoder(model, memory_mb=memory_mb).from_normed(normed)
        assert got.shape == (3, 7, model.vocab_size) and got.dtype == torch.float32
        torch.testing.assert_close(got, direct, atol=1e-6, rtol=0)
    if model.logit_softcap is not None:
        assert LayerDecoder(model).from_normed(normed * 100).abs().max() <= model.logit_softcap
    assert LayerDecoder(model).from_normed(normed).grad_fn is None
    assert LayerDecoder(model).from_normed(normed.requires_grad_(), grad=True).grad_fn is not None


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
@pytest.mark.parametrize("memory_mb", [0.001, 256.0])
def test_next_token_nll_matches_the_full_log_softmax(arch, memory_mb):
    from interlayer.lens import TunedLens

    model = interlayer.load_model(make_tiny(arch))
    hidden = torch.randn(2, 6, model.d_model)
    targets = torch.randint(0, model.vocab_size, (2, 6))
    dec = LayerDecoder(model, memory_mb=memory_mb)

    def direct(logits):
        return -torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None])[..., 0]

    plain = direct(model.unembed_resid(hidden).detach())
    got = dec.next_token_nll(hidden, targets)
    assert got.shape == (2, 6) and got.dtype == torch.float32
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=0)
    # already final-normed states skip the norm, as from_normed
    torch.testing.assert_close(dec.next_token_nll(model.final_norm(hidden).detach(), targets, normed=True), plain,
                               atol=1e-5, rtol=0)
    # a mask decodes only its positions; the others are 0
    mask = torch.rand(2, 6) > 0.4
    masked = dec.next_token_nll(hidden, targets, mask=mask)
    torch.testing.assert_close(masked[mask], plain[mask], atol=1e-5, rtol=0)
    assert torch.all(masked[~mask] == 0)
    # double precision where a caller scores in it
    double = dec.next_token_nll(hidden, targets, dtype=torch.float64)
    assert double.dtype == torch.float64
    torch.testing.assert_close(double, -torch.log_softmax(model.unembed_resid(hidden).detach().float().double(), -1)
                               .gather(-1, targets[..., None])[..., 0], atol=1e-6, rtol=0)
    # through a lens, for a layer
    lens = TunedLens.for_model(model)
    with torch.no_grad():
        for translator in lens.translators.values():
            translator.weight.normal_(0, 0.1)
    moved = lens.transform(hidden, 1).detach()
    tuned = LayerDecoder(model, memory_mb=memory_mb, lens=lens).next_token_nll(hidden, targets, 1)
    torch.testing.assert_close(tuned, direct(model.unembed_resid(moved).detach()), atol=1e-5, rtol=0)
    assert not torch.allclose(tuned, plain)
    with pytest.raises(interlayer.InterlayerError, match="targets must have the leading shape"):
        dec.next_token_nll(hidden, targets[0])


@pytest.mark.parametrize("rows_per_step", [1, 4, 100])
def test_variant_nll_and_kl_match_a_direct_computation(rows_per_step):
    model = interlayer.load_model(make_tiny("gemma2"))
    hidden = [torch.randn(9, model.d_model) * s for s in (1.0, 1.5, 0.3)]
    targets = torch.randint(0, model.vocab_size, (9,))
    normed = [model.final_norm(h).detach() for h in hidden]
    nll, kl = LayerDecoder(model).variant_nll_and_kl(normed, targets, rows_per_step=rows_per_step)
    logp = [torch.log_softmax(model.unembed_resid(h).detach().double(), -1) for h in hidden]
    for v in range(3):
        assert nll[v] == pytest.approx(float(-logp[v].gather(-1, targets[:, None]).sum()), rel=1e-5)
        direct_kl = float((logp[0].exp() * (logp[0] - logp[v])).sum())
        assert kl[v] == pytest.approx(direct_kl, rel=1e-4, abs=1e-6)
    assert kl[0] == 0.0 and kl[1] > 0 and kl[2] > 0
