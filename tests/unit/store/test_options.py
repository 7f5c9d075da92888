"""The store's option dataclasses: bounds and choices declared with option(), checked
with the keyword's name; from_kwargs and options=-or-keywords shared by both."""

import dataclasses

import pytest

from interlayer.errors import InterlayerError
from interlayer.store.cache import CacheOptions
from interlayer.store.options import CollectOptions, KeywordOptions


@pytest.mark.parametrize("given, says", [
    ({"batch_size": 0}, "batch_size must be an integer of at least 1, got 0"),
    ({"batch_size": 2.0}, "batch_size must be an integer of at least 1, got 2.0"),
    ({"limit": True}, "limit must be an integer of at least 1, got True"),
    ({"skip": -1}, "skip must be an integer of at least 0, got -1"),
    ({"context_length": 1}, "context_length must be an integer of at least 2, got 1"),
    ({"rows_per_chunk": 0}, "rows_per_chunk must be an integer of at least 1, got 0"),
    ({"batch_tokens": 0}, "batch_tokens must be an integer of at least 1, got 0"),
    ({"memory_mb": 0.0}, "memory_mb must be greater than 0, got 0.0"),
    ({"output_device": "gpu"}, "output_device='gpu'; valid choices: 'cpu', 'model'"),
    ({"padding_side": "up"}, "padding_side='up'; valid choices: 'left', 'right'"),
    ({"select": "all"}, "unknown selection 'all'; valid choices"),
])
def test_collect_options_check_their_declared_bounds(given, says):
    with pytest.raises(InterlayerError, match=says.replace("(", r"\(").replace(")", r"\)")):
        CollectOptions(**given)


def test_every_bound_is_declared_in_the_field():
    declared = {f.name for f in dataclasses.fields(CollectOptions)
                if f.metadata.get("min") is not None or f.metadata.get("choices") or f.metadata.get("above") is not None}
    assert declared == {"select", "batch_size", "batch_tokens", "context_length", "padding_side", "memory_mb", "rows_per_chunk",
                        "output_device", "max_length", "limit", "tokens", "skip"}


@pytest.mark.parametrize("cls", [CollectOptions, CacheOptions])
def test_from_kwargs_and_of_call_are_shared(cls):
    assert issubclass(cls, KeywordOptions)
    with pytest.raises(InterlayerError, match="unknown option.*'batch_sise'.*valid options"):
        cls.from_kwargs({"batch_sise": 2})
    assert cls.of_call(None, {"batch_size": 2, "model": object()}).batch_size == 2
    given = cls(batch_size=2)
    assert cls.of_call(given, {"batch_size": 8}) is given  # keywords at their defaults
    with pytest.raises(InterlayerError, match=rf"options={cls.__name__}\(...\) or as keywords, not both.*batch_size"):
        cls.of_call(given, {"batch_size": 4})
    with pytest.raises(InterlayerError, match=f"options must be a {cls.__name__}"):
        cls.of_call("nope", {})
    with pytest.warns(DeprecationWarning, match="storage_dtype"):
        assert cls.of_call(None, {"dtype": "bfloat16"}).storage_dtype == "bfloat16"


@pytest.mark.parametrize("name", ["collect", "stream", "collect_variants", "stream_variants"])
def test_the_explicit_signatures_keep_collect_options_defaults(name):
    """collect/stream spell every keyword out (for help(), IDEs and type checkers); their
    defaults must be CollectOptions's, the one place each is declared."""
    import inspect

    import interlayer.store.collect as store

    declared = {f.name: f.default for f in dataclasses.fields(CollectOptions)}
    params = inspect.signature(getattr(store, name)).parameters
    spelled = {n: p.default for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n in declared}
    assert len(spelled) >= 15
    assert spelled == {n: declared[n] for n in spelled}
