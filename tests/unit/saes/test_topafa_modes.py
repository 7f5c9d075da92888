"""Top-AFA's two AFA forms and the authors-exact mode, against hand computations and a
direct transcription of the authors' code (SewoongLee/top-afa-sae, training/sae.py and
training/training.py), written here from their rule without using interlayer's code."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import interlayer
from interlayer.saes import SAE, SAEConfig
from interlayer.saes import topafa
from interlayer.saes.evaluation import evaluate_activations
from interlayer.saes.sources import TensorSource
from interlayer.saes.training import TrainOptions, afa_target, batch_losses, train_sae


def _standardise(x):
    mean = x.mean(-1, keepdim=True)
    centred = x - mean
    return centred / (centred.std(-1, keepdim=True) + 1e-5)


def _data(n=512, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    # anisotropic, like a residual stream: a large shared direction plus noise
    direction = torch.randn(d, generator=g)
    return torch.randn(n, d, generator=g) + 4 * direction


@pytest.mark.parametrize("form", ["authors", "centred"])
def test_afa_losses_equal_hand_computations(form):
    sae = SAE(SAEConfig(d_in=16, d_sae=48, arch="topafa", afa_form=form), seed=1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1, 1, 16))
    x = _data(32)
    terms = {k: v.detach() for k, v in batch_losses(sae, x, TrainOptions(progress=False),
                                                    torch.zeros(48, dtype=torch.bool)).items()}
    z = _standardise(x)
    with torch.no_grad():
        f = sae(x).f
    target = (z - sae.b_dec.detach()).norm(dim=-1) if form == "centred" else z.norm(dim=-1)
    hand = ((f.norm(dim=-1) - target) ** 2).mean()
    assert float(terms["afa"]) == pytest.approx(float(hand), rel=1e-5)
    other = (z - sae.b_dec.detach()).norm(dim=-1) if form == "authors" else z.norm(dim=-1)
    assert float(terms["afa"]) != pytest.approx(float(((f.norm(dim=-1) - other) ** 2).mean()), rel=1e-3)
    torch.testing.assert_close(afa_target(sae, z), target)


def test_centred_target_does_not_train_b_dec():
    sae = SAE(SAEConfig(d_in=16, d_sae=48, arch="topafa", afa_form="centred"), seed=1)
    with torch.no_grad():
        sae.b_dec.copy_(torch.linspace(-1, 1, 16))
    z = _standardise(_data(8)).requires_grad_(True)
    afa_target(sae, z).sum().backward()
    assert sae.b_dec.grad is None and z.grad is not None


def test_defaults_and_config_checks():
    assert SAEConfig(d_in=4, d_sae=8, arch="topafa").afa_form == "centred"
    assert SAEConfig(d_in=4, d_sae=8, arch="topafa", authors_exact=True).afa_form == "authors"
    assert SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "arch": "topafa"}).afa_form == "authors"  # saved before forms
    with pytest.raises(interlayer.InterlayerError, match="cannot be combined with afa_form='centred'"):
        SAEConfig(d_in=4, d_sae=8, arch="topafa", afa_form="centred", authors_exact=True)
    with pytest.raises(interlayer.InterlayerError, match="options of the 'topafa' architecture"):
        SAEConfig(d_in=4, d_sae=8, arch="topk", k=2, afa_form="centred")
    with pytest.raises(interlayer.InterlayerError, match="valid choices: 'centred', 'authors'"):
        SAEConfig(d_in=4, d_sae=8, arch="topafa", afa_form="center")
    options = TrainOptions(progress=False)
    exact = SAEConfig(d_in=4, d_sae=8, arch="topafa", authors_exact=True)
    assert (options.warmup(exact), options.decay(exact)) == (0, 0.0)
    centred = SAEConfig(d_in=4, d_sae=8, arch="topafa")
    assert (options.warmup(centred), options.decay(centred)) == (50, 0.2)
    assert options.b_dec_start(centred) == "mean" and options.b_dec_start(exact) == "zeros"
    with pytest.raises(interlayer.InterlayerError, match="constant learning rate"):
        TrainOptions(warmup_steps=5, progress=False).check(exact)


def test_sentinel_excludes_k_equal_h():
    scores = torch.tensor([[4.0, 1.0, 1.0], [4.0, 1.0, 1.0]])
    target = torch.tensor([100.0, 2.0])  # the first needs every latent without the sentinel
    assert topafa.select_sorted(scores, target).k.tolist() == [3, 1]
    assert topafa.select_sorted(scores, target, sentinel=True).k.tolist() == [2, 1]
    assert topafa.select(scores, target, 1, sentinel=True).k.tolist() == [2, 1]
    g = torch.Generator().manual_seed(0)
    acts = torch.rand(200, 64, generator=g) ** 2
    target = torch.rand(200, generator=g) * acts.square().sum(-1).sqrt() * 1.3
    target[:3] = 1e3
    fast = topafa.select(acts.pow(2), target, 4, sentinel=True)
    ref = _authors_selection(acts, torch.ones(64), target)
    assert torch.equal(fast.keep, ref) and torch.equal(topafa.select_sorted(acts.pow(2), target, sentinel=True).keep, ref)


# ---------------------------------------------------------------- the authors' code, transcribed
def _authors_selection(acts, dec_norms, target):
    dec_scaled_acts = (acts * dec_norms).pow(2)
    max_indices = torch.argsort(dec_scaled_acts, dim=-1, descending=True)
    cumulative_fa = torch.cumsum(torch.gather(dec_scaled_acts, -1, max_indices), dim=-1)
    cumulative_fa[..., -1] = 1e8
    k = torch.abs(torch.sqrt(cumulative_fa) - target.unsqueeze(-1)).argmin(dim=-1) + 1
    return torch.zeros_like(acts, dtype=torch.bool).scatter_(
        dim=1, index=max_indices, src=torch.arange(acts.shape[1]).unsqueeze(0) < k.unsqueeze(1))


class _AuthorsTopAFA(torch.nn.Module):
    """TopAFASAE from the authors' training/sae.py, with their loss and dead counters."""

    def __init__(self, ours, cfg):
        super().__init__()
        self.cfg = cfg
        self.b_dec = torch.nn.Parameter(ours.b_dec.detach().clone())
        self.b_enc = torch.nn.Parameter(ours.b_enc.detach().clone())
        self.W_enc = torch.nn.Parameter(ours.W_enc.detach().clone())
        self.W_dec = torch.nn.Parameter(ours.W_dec.detach().clone())
        self.num_batches_not_active = torch.zeros(cfg["dict_size"])

    def forward(self, x):
        x = _standardise(x)
        x_cent = x - self.b_dec
        acts = F.relu(x_cent @ self.W_enc)
        afa = torch.norm(x_cent, p=2, dim=1)
        keep = _authors_selection(acts, torch.norm(self.W_dec, p=2, dim=-1), afa)
        acts_topk = acts * keep
        x_reconstruct = acts_topk @ self.W_dec + self.b_dec
        self.num_batches_not_active += (acts_topk.sum(0) == 0).float()
        self.num_batches_not_active[acts_topk.sum(0) > 0] = 0
        l2_loss = (x_reconstruct - x).pow(2).mean()
        aux_loss = self.auxiliary(x, x_reconstruct, acts)
        afa_loss = self.cfg["afa_coeff"] * torch.mean((torch.norm(acts_topk, p=2, dim=-1) - torch.norm(x, p=2, dim=-1)).pow(2))
        return l2_loss + aux_loss + afa_loss

    def auxiliary(self, x, x_reconstruct, acts):
        dead = self.num_batches_not_active >= self.cfg["n_batches_to_dead"]
        if dead.sum() == 0:
            return torch.tensor(0.0)
        residual = x - x_reconstruct
        top = torch.topk(acts[:, dead], min(self.cfg["top_k_aux"], int(dead.sum())), dim=-1)
        acts_aux = torch.zeros_like(acts[:, dead]).scatter(-1, top.indices, top.values)
        return self.cfg["aux_penalty"] * (acts_aux @ self.W_dec[dead] - residual).pow(2).mean()

    @torch.no_grad()
    def make_decoder_weights_and_grad_unit_norm(self):
        normed = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        self.W_dec.grad -= (self.W_dec.grad * normed).sum(-1, keepdim=True) * normed
        self.W_dec.data = normed


def _authors_train(sae_init, batches, cfg):
    model = _AuthorsTopAFA(sae_init, cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]))
    losses = []
    for batch in batches:
        loss = model(batch)
        losses.append(float(loss.detach()))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["max_grad_norm"])
        model.make_decoder_weights_and_grad_unit_norm()
        optimizer.step()
        optimizer.zero_grad()
    return model, losses


def test_authors_exact_mode_equals_the_transcribed_code():
    d, h, batch, steps = 16, 48, 64, 12
    x = _data(batch * 4, d, seed=3)
    options = TrainOptions(tokens=batch * steps, batch_size=batch, lr=3e-3, dead_after=2, aux_k=8, afa_coeff=1 / 32,
                           checkpoint_every=0, log_every=1, progress=False)
    cfg = SAEConfig(d_in=d, d_sae=h, arch="topafa", authors_exact=True)
    result = train_sae(TensorSource(x, batch, seed=0), copy.deepcopy(cfg), options)
    batches = [b.x for _, b in zip(range(steps), TensorSource(x, batch, seed=0).batches())]
    authors_cfg = {"lr": 3e-3, "beta1": 0.9, "beta2": 0.99, "max_grad_norm": 100000, "afa_coeff": 1 / 32,
                   "aux_penalty": 1 / 32, "top_k_aux": 8, "n_batches_to_dead": 2, "dict_size": h}
    theirs, losses = _authors_train(SAE(cfg, seed=options.seed), batches, authors_cfg)
    ours = result.sae
    assert [row["loss"] for row in result.history] == pytest.approx(losses, rel=1e-6)
    assert any(row.get("auxk", 0) > 0 for row in result.history)  # AuxK took part
    for name in ("W_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), atol=1e-6, rtol=1e-6, msg=name)
    assert float(ours.b_enc.detach().abs().max()) == 0.0  # the authors' encoder has no b_enc
    # The interlayer recipe (authors' form otherwise the same) is a different training: the test can fail.
    plain = SAEConfig(d_in=d, d_sae=h, arch="topafa", afa_form="authors")
    other = train_sae(TensorSource(x, batch, seed=0), plain, TrainOptions(**{**options.__dict__, "warmup_steps": 0,
                                                                                "decay_fraction": 0.0}))
    assert not torch.allclose(other.sae.W_dec, theirs.W_dec, atol=1e-4)


def test_eps_lbo_forms():
    x = _data(64)
    for form in ("authors", "centred"):
        sae = SAE(SAEConfig(d_in=16, d_sae=48, arch="topafa", afa_form=form), seed=2).eval()
        with torch.no_grad():
            sae.b_dec.copy_(torch.linspace(-1, 1, 16))
            out = sae(x)
            ev = evaluate_activations(sae, x)
            sae.requires_grad_(False)
        coded = (out.f * sae.W_dec.norm(dim=-1)).double().square().sum(-1)
        authors_z, authors_f = out.x_in.double().square().sum(-1), coded + sae.b_dec.double().norm() ** 2
        centred_z, centred_f = (out.x_in - sae.b_dec).double().square().sum(-1), coded
        authors = (authors_z - authors_f).abs() / (47 * authors_f)
        centred = (centred_z - centred_f).abs() / (47 * centred_f)
        assert ev.metrics["eps_lbo_form"] == form
        assert ev.metrics["eps_lbo_authors_median"] == pytest.approx(float(np.median(authors.numpy())), rel=1e-4)
        assert ev.metrics["eps_lbo_centred_median"] == pytest.approx(float(np.median(centred.numpy())), rel=1e-4)
        assert ev.metrics["eps_lbo_centred_median"] != pytest.approx(ev.metrics["eps_lbo_authors_median"], rel=1e-3)
        mine = centred if form == "centred" else authors
        assert ev.metrics["eps_lbo_median"] == pytest.approx(float(np.median(mine.numpy())), rel=1e-4)
        std = (x.double() - x.double().mean(-1, keepdim=True)).std(-1, keepdim=True)
        mse = (((x - out.x_hat).double() / (std + 1e-5)) ** 2).mean()
        assert ev.metrics["mse_standardized"] == pytest.approx(float(mse), rel=1e-6)


@pytest.mark.parametrize("sentinel", [False, True])
@pytest.mark.parametrize("candidates", [1, 4, 64])
def test_fused_encode_equals_the_sorted_rule_with_gradients(sentinel, candidates):
    g = torch.Generator().manual_seed(candidates)
    pre = (torch.randn(300, 96, generator=g) * torch.rand(300, 1, generator=g) * 3).requires_grad_(True)
    norms = torch.rand(96, generator=g) + 0.5
    target = torch.rand(300, generator=g) * 6
    target[:5] = 1e3  # rows that need every latent (or, with the sentinel, all but one)
    f, k = topafa.encode(pre, norms, target, candidates, sentinel=sentinel)
    ref_pre = pre.detach().clone().requires_grad_(True)
    acts = torch.relu(ref_pre)
    chosen = topafa.select_sorted((acts * norms).square().detach(), target, sentinel=sentinel)
    ref = acts * chosen.keep
    assert torch.equal(f.detach(), ref.detach()) and torch.equal(k, chosen.k)
    weights = torch.randn(300, 96, generator=g)
    (f * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(pre.grad, ref_pre.grad)
