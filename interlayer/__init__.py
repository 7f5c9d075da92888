"""interlayer: mechanistic interpretability of the intermediate layers of
transformer language models.

Quick start::

    import interlayer
    model = interlayer.load_model("gemma-3-270m")
    logits, acts = model.run(**model.tokenize("The capital of France is"), read=["resid_post.9"], logits=True)
    decoded = interlayer.LayerDecoder(model).decode(acts["resid_post.9"], top_k=5)

Every result has ``to_frame()``, ``plot()``, ``save(path)``, ``load(path)`` and an HTML
summary in Jupyter (:class:`Result`); intervals come from :mod:`interlayer.intervals`,
layer numberings other than the block index are converted by :mod:`interlayer.layers`.
"""

from . import _moved
from .store.cache import ActivationStore, CacheOptions, cache
from .store.collect import Activations, CollectOptions, collect, collect_variants, stream, stream_variants
from .model.adapter import ModelAdapter
from .model.architectures import ARCHITECTURES, ArchSpec, supported_model_types
from .store.capture import Edit
from .decoding import DecodeResult, LayerDecoder, Lens, LogitLens
from .errors import (
    CacheCorruptError,
    InterlayerError,
    LayerIndexError,
    UnknownModelError,
    UnknownSiteError,
    UnsupportedArchitectureError,
)
from .model.loading import DEFAULT_MODEL, EMBEDDED, load_model
from .results import Result
from .model.sites import SITE_KINDS, Site

_moved.install()

__version__ = "0.1.0"

__all__ = [
    "ActivationStore",
    "Activations",
    "CacheOptions",
    "CollectOptions",
    "Edit",
    "Lens",
    "LogitLens",
    "cache",
    "collect",
    "collect_variants",
    "stream",
    "stream_variants",
    "ARCHITECTURES",
    "ArchSpec",
    "CacheCorruptError",
    "DEFAULT_MODEL",
    "DecodeResult",
    "EMBEDDED",
    "InterlayerError",
    "LayerDecoder",
    "LayerIndexError",
    "ModelAdapter",
    "Result",
    "SITE_KINDS",
    "Site",
    "UnknownModelError",
    "UnknownSiteError",
    "UnsupportedArchitectureError",
    "load_model",
    "supported_model_types",
]
