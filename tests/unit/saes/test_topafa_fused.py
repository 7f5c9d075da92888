"""The fused top-AFA kernel (interlayer.saes.topafa_triton) against the full-sort reference.

Triton's interpreter (``TRITON_INTERPRET=1``, which must be set before triton is imported)
runs the kernel on CPU tensors, so these run in a subprocess; they check exactness only.
On a CUDA machine the same checks run on the device (the last test)."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

triton = pytest.importorskip("triton")

CHECKS = textwrap.dedent('''
    import sys
    import torch
    from interlayer.saes import topafa, topafa_triton
    sys.path.insert(0, {tests!r})
    from test_topafa import _random_keys, assert_entries_match

    device = {device!r}

    def fused(keys, target, candidates, sentinel=False, exact=True):
        keys, target = keys.to(device), target.to(device)
        e = topafa.Entries(*topafa_triton.entries(keys, target, candidates, sentinel))
        e = topafa.Entries(*(t.cpu() for t in e))
        assert_entries_match(e, keys.cpu(), target.cpu(), sentinel, exact)
        return e

    for rows, h, candidates in [(16, 7, 1), (8, 50, 1), (6, 300, 64), (1, 77, 16), (5, 1, 1)]:
        keys, target = _random_keys(rows, h, seed=rows + h)
        for sentinel in (False, True):
            fused(keys, target, candidates, sentinel)  # candidates 1: CAP 16, so wide rows too
    h = 37
    keys = torch.rand(6, h) + 0.1
    keys[0] = 0.0
    keys[1] = -1.0
    keys[2, 1:] = -1.0
    target = torch.tensor([1.0, 2.0, 3.0, 0.5, 30.0, 0.0])
    for sentinel in (False, True):
        e = fused(keys, target, 16, sentinel)
        assert e.k.tolist()[:3] == [1, 1, 1] and e.k[4] == (h - 1 if sentinel else h)
    assert fused(keys[3:5], torch.tensor([1e4, 1e4 + 1]), 16, True).k.tolist() == [h, h]
    gen = torch.Generator().manual_seed(3)
    ties = torch.randint(-3, 4, (24, 64), generator=gen).float() / 2
    goal = torch.rand(24, generator=gen) * torch.relu(ties).square().sum(-1).sqrt() * 1.2
    fused(ties, goal, 16, False, exact=False)
    fused(ties, goal, 16, True, exact=False)
    for dtype in (torch.float16, torch.bfloat16):
        keys, target = _random_keys(8, 100, seed=5, dtype=dtype)
        fused(keys, target, 16, False, exact=False)
        fused(keys, target.to(dtype), 16, True, exact=False)
    print("fused ok")
''')


def _run(device: str, interpret: bool) -> None:
    env = dict(os.environ)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    script = CHECKS.format(tests=os.path.dirname(__file__), device=device)
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "fused ok" in run.stdout, run.stdout[-2000:] + run.stderr[-4000:]


@pytest.mark.slow
def test_kernel_equals_the_full_sort_in_the_interpreter():
    _run("cpu", interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_kernel_equals_the_full_sort_on_cuda():
    _run("cuda", interpret=False)


def test_cpu_tensors_take_the_torch_path():
    from interlayer.saes import topafa

    keys = torch.randn(4, 20)
    target = torch.ones(4)
    got, ref = topafa.entries(keys, target), topafa.entries_torch(keys, target)
    assert all(torch.equal(a, b) for a, b in zip(got, ref))
