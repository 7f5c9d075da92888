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
