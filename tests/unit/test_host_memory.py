"""Freed host memory is handed back to the OS between the store's batches (glibc's
``malloc_trim``), only for a model on the CPU, and can be turned off."""

from __future__ import annotations

import sys

import pytest

from interlayer import host_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_trim_runs_on_the_cpu_only_and_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(host_memory, "_LOADED", False)
    assert host_memory.trim_host_memory("cpu") is True
    assert host_memory.trim_host_memory("cuda:0") is False and host_memory.trim_host_memory("meta") is False
    monkeypatch.setattr(host_memory, "_LOADED", False)
    monkeypatch.setenv("INTERLAYER_MALLOC_TRIM", "0")
    assert host_memory.trim_host_memory("cpu") is False


def test_the_store_trims_after_every_batch(monkeypatch):
    import interlayer
    from interlayer.store import collect as collect_module
    from tests.tiny_models import make_tiny

    calls = []
    monkeypatch.setattr(collect_module, "trim_host_memory", lambda device: calls.append(str(device)))
    model = interlayer.load_model(make_tiny("llama"))
    interlayer.collect(model, [[1, 2, 3], [4, 5], [6, 7, 8, 9]], "resid_post.0", batch_size=1, progress=False)
    assert calls == ["cpu"] * 3


def test_generation_trims_after_each_call(monkeypatch):
    import interlayer
    from interlayer import generation
    from tests.tiny_models import make_tiny

    calls = []
    monkeypatch.setattr(generation, "trim_host_memory", lambda device: calls.append(str(device)))
    model = interlayer.load_model(make_tiny("llama"))
    generation.generate_ids(model, [[1, 2, 3]], max_new_tokens=2)
    generation.generate_ids(model, [[4, 5]], max_new_tokens=2)
    assert calls == ["cpu"] * 2


def test_the_report_releases_memory_before_every_section(monkeypatch, tmp_path):
    import interlayer
    from interlayer.report import build
    from tests.tiny_models import make_tiny

    calls = []
    monkeypatch.setattr(build, "release_host_memory", lambda device: calls.append(str(device)))
    model = interlayer.load_model(make_tiny("llama"))
    files = build.build_report(model, tmp_path / "r.html", only="model,logit_lens", progress=False)
    assert list(files.results) == ["model", "logit_lens"] and calls == ["cpu"] * 2


def test_release_collects_garbage_before_trimming(monkeypatch):
    order = []
    monkeypatch.setattr(host_memory.gc, "collect", lambda: order.append("gc"))
    monkeypatch.setattr(host_memory, "trim_host_memory", lambda device: order.append(f"trim {device}") or True)
    assert host_memory.release_host_memory("cpu") is True and order == ["gc", "trim cpu"]


def test_trim_every_leaves_the_scores_alone_and_trims_every_n_steps(monkeypatch):
    import torch

    from interlayer import generation

    calls = []
    monkeypatch.setattr(generation, "trim_host_memory", lambda device: calls.append(str(device)))
    trim = generation.TrimEvery("cpu", steps=3)
    scores = torch.randn(2, 5)
    outs = [trim(torch.zeros(2, 1, dtype=torch.long), scores) for _ in range(7)]
    assert all(o is scores for o in outs) and calls == ["cpu"] * 2


def test_trimming_inside_generation_changes_no_token(monkeypatch):
    import interlayer
    from interlayer import generation
    from interlayer.generation import Sampling
    from tests.tiny_models import make_tiny

    model = interlayer.load_model(make_tiny("llama"))
    prompts = [[1, 2, 3], [4, 5, 6, 7]]
    sampling = Sampling(temperature=0.8, top_p=0.9, top_k=0, seed=3)
    monkeypatch.setattr(generation, "TRIM_STEPS", 10**6)
    greedy, sampled = (generation.generate_ids(model, prompts, max_new_tokens=6),
                       generation.generate_ids(model, prompts, max_new_tokens=6, sampling=sampling, paths=2))
    monkeypatch.setattr(generation, "TRIM_STEPS", 1)
    assert generation.generate_ids(model, prompts, max_new_tokens=6).equal(greedy)
    assert generation.generate_ids(model, prompts, max_new_tokens=6, sampling=sampling, paths=2).equal(sampled)


def test_the_fused_decoder_keeps_a_copy_of_the_last_position_not_a_view():
    import torch

    from interlayer.lens.fused_decoding import last_position_keeper

    rows = {}
    prefill = torch.randn(2, 50, 8)
    last_position_keeper(rows, "resid_post.0")(prefill)
    kept = rows["resid_post.0"]
    assert kept.equal(prefill[:, -1]) and kept.untyped_storage().nbytes() == 2 * 8 * 4
