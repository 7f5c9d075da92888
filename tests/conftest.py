"""Shared fixtures. Tests never touch the network: the hub is switched off here."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tests.tiny_models import TINY_ARCHITECTURES, make_tiny


def pytest_collection_modifyitems(config, items):
    """The docs-site tests run last: the site build then reuses the notebooks that
    tests/integration/test_notebook.py executed in this run."""
    items.sort(key=lambda item: item.get_closest_marker("docs_site") is not None)


@pytest.fixture(params=sorted(TINY_ARCHITECTURES))
def tiny_hf(request):
    """Each supported architecture as a tiny random Hugging Face model."""
    return make_tiny(request.param)


@pytest.fixture
def tiny_ids():
    torch.manual_seed(0)
    return torch.randint(5, 60, (2, 7))


@pytest.fixture(scope="session")
def gemma():
    """The real embedded Gemma 3 270M (converted once into the session's cache)."""
    import interlayer

    return interlayer.load_model("gemma-3-270m", device="cpu")
