"""Layer numbering: the one numbering of the toolkit, and the converters at its edges.

interlayer numbers layers by **block index** ``l`` = 0..L-1: layer ``l`` is the output of
block ``l``, the site ``resid_post.l``. Every other numbering the toolkit must speak is
converted here, and results that use one name it explicitly (a ``hidden_index`` column
next to ``layer``):

* **hidden index** ``i`` = 0..L (Hugging Face ``output_hidden_states``, MEXA, DoLa and
  tuned-lens): ``i = 0`` is the embeddings (``resid_pre.0``, no block applied; its
  ``layer`` is ``None``), ``i`` >= 1 is ``resid_post.(i - 1)``.
* **llama.cpp control vectors**: tensor ``direction.N`` with ``N`` = 1..L is ``resid_post.(N - 1)``.
* **relative depth** ``d`` in [0, 1]: the fraction of the blocks applied, ``(l + 1) / L``
  (the embeddings at 0, the last block at 1), so the hidden index ``i`` sits at ``i / L``
  and every method's curve shares one depth axis.
"""

from __future__ import annotations

from .errors import InterlayerError, LayerIndexError

__all__ = ["gguf_direction", "hidden_index", "hidden_index_layers", "hidden_index_site", "layer_at_depth",
           "layer_from_gguf_direction", "layer_from_hidden_index", "relative_depth"]


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InterlayerError(f"{what} must be a whole number, got {value!r}")
    return value


def layer_from_hidden_index(index: int, n_layers: int | None = None) -> int | None:
    """The block index of hidden state ``index`` (0..``n_layers``, checked when given):
    ``None`` for the embeddings (0), else ``index - 1``."""
    index = _whole(index, "a hidden index")
    if index < 0 or (n_layers is not None and index > n_layers):
        raise LayerIndexError(f"hidden index {index} is out of range; valid hidden indices are 0..{n_layers or 'L'} "
                              "(0 is the embeddings, i is resid_post.(i-1))")
    return None if index == 0 else index - 1


def hidden_index(layer: int | None) -> int:
    """The hidden index of block ``layer`` (``layer + 1``); ``None`` (the embeddings) is 0."""
    return 0 if layer is None else _whole(layer, "a layer") + 1


def hidden_index_site(index: int) -> str:
    """The site of hidden state ``index``: ``resid_pre.0`` for the embeddings, else ``resid_post.(index - 1)``."""
    index = _whole(index, "a hidden index")
    if index < 0:
        raise LayerIndexError(f"hidden index {index} is negative; 0 is the embeddings")
    return "resid_pre.0" if index == 0 else f"resid_post.{index - 1}"


def hidden_index_layers(n_hidden: int) -> list[int | None]:
    """The block index of each of ``n_hidden`` hidden states 0..n_hidden-1: ``[None, 0, 1, ...]``."""
    return [None if i == 0 else i - 1 for i in range(_whole(n_hidden, "a hidden-state count"))]


def layer_from_gguf_direction(number: int, n_layers: int | None = None) -> int:
    """The block index of llama.cpp's 1-based ``direction.N`` tensor (``N - 1``), checked
    against the model's ``n_layers`` when given."""
    number = _whole(number, "a direction number")
    if number < 1 or (n_layers is not None and number > n_layers):
        raise LayerIndexError(f"direction.{number} is out of range; a {n_layers or 'L'}-layer model has direction.1.."
                              f"direction.{n_layers or 'L'} (direction.N is resid_post.(N-1))")
    return number - 1


def gguf_direction(layer: int) -> int:
    """llama.cpp's 1-based direction number of block ``layer`` (``layer + 1``)."""
    layer = _whole(layer, "a layer")
    if layer < 0:
        raise LayerIndexError(f"layer {layer} is negative; give a block index 0..L-1")
    return layer + 1


def relative_depth(layer: int | None, n_layers: int) -> float:
    """The fraction of blocks applied at block ``layer``: ``(layer + 1) / n_layers``; the
    embeddings (``None``) are at 0."""
    if n_layers < 1:
        raise InterlayerError(f"n_layers must be at least 1, got {n_layers}")
    if layer is None:
        return 0.0
    layer = _whole(layer, "a layer")
    if not 0 <= layer < n_layers:
        raise LayerIndexError(f"layer {layer} is out of range; valid layers are 0..{n_layers - 1}")
    return (layer + 1) / n_layers


def layer_at_depth(depth: float, n_layers: int) -> int | None:
    """The block nearest to relative ``depth`` in [0, 1] (``None`` = the embeddings at depth 0's side)."""
    if not 0 <= depth <= 1:
        raise InterlayerError(f"relative depth must lie in [0, 1], got {depth}")
    return layer_from_hidden_index(round(depth * n_layers), n_layers)
