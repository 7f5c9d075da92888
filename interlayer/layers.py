"""Layer numbering: the one numbering of the toolkit, and the converters at its edges.

interlayer numbers layers by **block index** ``l`` = 0..L-1: layer ``l`` is the output of
block ``l``, the site ``resid_post.l``. Every other numbering the toolkit must speak is
converted here, and results that use one name it explicitly (a ``hidden_index`` column
next to ``layer``); the names other libraries give the same places are converted by
:mod:`interlayer.naming`.

* **hidden index** ``i`` = 0..L: the number of blocks applied (MEXA, DoLa and the
  consistency probes count layers so). ``i = 0`` is the embeddings (``resid_pre.0``, no
  block applied; its ``layer`` is ``None``), ``i`` >= 1 is block ``i - 1``'s output, its
  ``layer`` ``i - 1``. **The trap at i = L:** Hugging Face's ``output_hidden_states``
  counts the same way, but its last entry ``hidden_states[L]`` is taken *after* the final
  norm (the site ``ln_final``), so ``resid_post.(L-1)`` itself has no ``hidden_states``
  index. MEXA reads ``ln_final`` there, as Hugging Face does, and labels it ``layer``
  ``L - 1``; :func:`hidden_index_site` names that site when given ``n_layers``.
* **llama.cpp control vectors**: tensor ``direction.N`` is added to the output of 0-based
  block ``N`` (``resid_post.N``), N = 1..L-1; llama.cpp never steers block 0. (interlayer
  before this numbering wrote ``resid_post.l`` as ``direction.(l+1)``, one block late; its
  reader still reads those files right, :mod:`interlayer.steering.gguf_io`.)
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


def hidden_index_site(index: int, n_layers: int | None = None) -> str:
    """The site of hidden state ``index``: ``resid_pre.0`` for the embeddings, else
    ``resid_post.(index - 1)``; with ``n_layers``, index ``n_layers`` is ``ln_final``, as
    Hugging Face's ``hidden_states[L]`` is taken after the final norm (and an index
    beyond it is an error)."""
    index = _whole(index, "a hidden index")
    if index < 0:
        raise LayerIndexError(f"hidden index {index} is negative; 0 is the embeddings")
    if n_layers is not None:
        if index > n_layers:
            raise LayerIndexError(f"hidden index {index} is out of range; valid hidden indices are 0..{n_layers} "
                                  f"(0 is the embeddings, {n_layers} is ln_final, i is resid_post.(i-1) between)")
        if index == n_layers:
            return "ln_final"
    return "resid_pre.0" if index == 0 else f"resid_post.{index - 1}"


def hidden_index_layers(n_hidden: int) -> list[int | None]:
    """The block index of each of ``n_hidden`` hidden states 0..n_hidden-1: ``[None, 0, 1, ...]``."""
    return [None if i == 0 else i - 1 for i in range(_whole(n_hidden, "a hidden-state count"))]


_LLAMA_CPP_BLOCK_0 = ("llama.cpp never applies a control vector to block 0: llama_adapter_cvec keeps no tensor "
                      "for layer 0, and common_control_vector_load_one refuses direction.0")


def layer_from_gguf_direction(number: int, n_layers: int | None = None) -> int:
    """The block index of llama.cpp's ``direction.N`` tensor: ``N`` itself, since llama.cpp
    adds ``direction.N`` to the output of 0-based block ``N`` (``resid_post.N``). ``N`` is
    1..``n_layers - 1``, checked against the model's ``n_layers`` when given."""
    number = _whole(number, "a direction number")
    top = f"direction.{n_layers - 1}" if n_layers is not None else "direction.(L-1)"
    if number < 1 or (n_layers is not None and number > n_layers - 1):
        raise LayerIndexError(f"direction.{number} is out of range; llama.cpp applies direction.1..{top} "
                              f"(direction.N is added to block N's output, resid_post.N"
                              + (f"; {_LLAMA_CPP_BLOCK_0}" if number == 0 else "") + ")")
    return number


def gguf_direction(layer: int, n_layers: int | None = None) -> int:
    """llama.cpp's direction number of block ``layer``: ``layer`` itself (``direction.N``
    is added to the output of block ``N``). Block 0 cannot be written: llama.cpp never
    steers it, so ``layer`` 0 is a :class:`LayerIndexError` naming why."""
    layer = _whole(layer, "a layer")
    if layer < 0 or (n_layers is not None and layer >= n_layers):
        raise LayerIndexError(f"layer {layer} is out of range; give a block index 1.."
                              f"{n_layers - 1 if n_layers is not None else 'L-1'}")
    if layer == 0:
        raise LayerIndexError(f"layer 0 (resid_post.0) has no llama.cpp direction: {_LLAMA_CPP_BLOCK_0}; "
                              "llama.cpp steers blocks 1..L-1 (direction.N is resid_post.N)")
    return layer


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
