"""Each pluggable activation against a plain computation of its rule."""

import torch

from interlayer.saes import SAE, SAEConfig


def _sae(arch, k=None, d_in=12, d_sae=48, seed=0):
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, arch=arch, k=k, normalization="none"), seed=seed)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
        sae.b_dec.normal_(0, 0.3)
        sae.W_dec.mul_(torch.rand(d_sae, 1) + 0.5)  # unequal decoder norms matter for top-AFA
    return sae


def test_topk_keeps_exactly_the_k_largest_positive_pre_activations():
    sae = _sae("topk", k=5)
    x = torch.randn(20, 12)
    out = sae(x)
    assert ((out.f > 0).sum(-1) <= 5).all()
    relu = torch.relu(out.pre)
    for row in range(20):
        top = relu[row].topk(5).indices
        expected = torch.zeros(48).index_put_((top,), relu[row, top])
        assert torch.equal(out.f[row], expected)


def test_batchtopk_keeps_k_times_batch_while_training_and_thresholds_at_inference():
    sae = _sae("batchtopk", k=3)
    x = torch.randn(16, 12) * 3
    sae.train()
    out = sae(x)
    assert int((out.f > 0).sum()) == 3 * 16
    smallest = out.f[out.f > 0].min()
    assert torch.allclose(sae.activation.threshold, smallest)  # first batch sets it
    sae(x * 0.5)
    assert sae.activation.threshold < smallest  # later ones move it by EMA
    sae.eval()
    theta = sae.activation.threshold
    inference = sae(x)
    relu = torch.relu(inference.pre)
    assert torch.equal(inference.f, relu * (relu > theta))


def test_jumprelu_thresholds_and_their_straight_through_gradient():
    sae = _sae("jumprelu")
    with torch.no_grad():
        sae.activation.log_threshold.fill_(torch.log(torch.tensor(0.2)).item())
    x = torch.randn(64, 12)
    with torch.no_grad():
        out = sae(x)
    assert torch.equal(out.f, out.pre * (out.pre > 0.2))
    sae.train()
    out = sae(x)
    loss = sae.activation.sparsity_loss(out.pre, out.f)
    assert loss.item() == (out.pre > 0.2).sum(-1).float().mean().item()
    sae.activation.bandwidth = 0.5
    out = sae(x)
    (out.f.sum() + sae.activation.sparsity_loss(out.pre, out.f)).backward()
    grad = sae.activation.log_threshold.grad
    assert grad is not None and grad.abs().sum() > 0
    # by hand: d/dlog(t) = t * sum_b [-(t/bw) K(pre - t) * 1 - (1/bw) K(pre - t) / B]
    pre = out.pre.detach()
    window = ((pre - 0.2).abs() < 0.25).float()
    expected = 0.2 * (-(0.2 / 0.5) * window.sum(0) - (1 / 0.5) * window.sum(0) / 64)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_topafa_code_is_the_rule_applied_per_token():
    sae = _sae("topafa", d_sae=300)
    x = torch.randn(32, 12) * 2
    out = sae(x)
    norms = sae.W_dec.norm(dim=-1)
    acts = torch.relu(out.pre)
    for row in range(32):
        target = (x[row] - sae.b_dec).norm()
        scores = (acts[row] * norms).square()
        order = scores.sort(descending=True).indices
        cums = scores[order].cumsum(0).sqrt()
        k = int((cums - target).abs().argmin()) + 1
        expected = torch.zeros(300)
        expected[order[:k]] = acts[row, order[:k]]
        assert torch.allclose(out.f[row], expected)


def test_fast_and_sorted_topafa_give_the_same_sae_output():
    sae = _sae("topafa", d_sae=500)
    x = torch.randn(64, 12) * 2
    fast = sae(x)
    sae.activation.fast = False
    slow = sae(x)
    assert torch.equal(fast.f, slow.f)
    # the fast path decodes the chosen rows (embedding_bag), the sorted one multiplies by f: rounding only
    torch.testing.assert_close(fast.x_hat, slow.x_hat, atol=1e-5, rtol=1e-6)
