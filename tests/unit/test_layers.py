"""interlayer.layers: the block index and the numberings converted at the edge."""

import pytest

from interlayer.errors import InterlayerError, LayerIndexError
from interlayer.layers import (gguf_direction, hidden_index, hidden_index_layers, hidden_index_site, layer_at_depth,
                               layer_from_gguf_direction, layer_from_hidden_index, relative_depth)


def test_hidden_index_round_trips_and_zero_is_the_embeddings():
    n = 18
    assert layer_from_hidden_index(0, n) is None and hidden_index(None) == 0
    for layer in range(n):
        assert layer_from_hidden_index(hidden_index(layer), n) == layer
        assert hidden_index_site(hidden_index(layer)) == f"resid_post.{layer}"
    assert hidden_index_site(0) == "resid_pre.0"
    assert hidden_index_layers(4) == [None, 0, 1, 2]
    with pytest.raises(LayerIndexError, match="hidden index 19 is out of range; valid hidden indices are 0..18"):
        layer_from_hidden_index(19, n)
    with pytest.raises(LayerIndexError):
        layer_from_hidden_index(-1)
    with pytest.raises(InterlayerError, match="whole number"):
        layer_from_hidden_index(1.5, n)


def test_llama_cpp_direction_n_is_block_n_and_block_0_has_none():
    # llama.cpp adds direction.N to the output of 0-based block N (common_control_vector_load_one,
    # llama_adapter_cvec::apply, build_cvec); it never steers block 0
    assert gguf_direction(1) == 1 and gguf_direction(17, 18) == 17
    assert layer_from_gguf_direction(1, 18) == 1 and layer_from_gguf_direction(17, 18) == 17
    for layer in range(1, 18):
        assert layer_from_gguf_direction(gguf_direction(layer, 18), 18) == layer
    with pytest.raises(LayerIndexError, match=r"layer 0 \(resid_post\.0\) has no llama\.cpp direction: llama\.cpp "
                                              r"never applies a control vector to block 0"):
        gguf_direction(0)
    with pytest.raises(LayerIndexError, match=r"direction\.18 is out of range; llama\.cpp applies "
                                              r"direction\.1\.\.direction\.17"):
        layer_from_gguf_direction(18, 18)
    with pytest.raises(LayerIndexError, match="direction.0 is out of range.*never applies a control vector to block 0"):
        layer_from_gguf_direction(0)
    with pytest.raises(LayerIndexError, match=r"give a block index 1\.\.17"):
        gguf_direction(18, 18)
    with pytest.raises(LayerIndexError):
        gguf_direction(-1)


def test_hidden_index_l_is_ln_final_when_the_layer_count_is_known():
    assert hidden_index_site(18, 18) == "ln_final" and hidden_index_site(17, 18) == "resid_post.16"
    assert hidden_index_site(18) == "resid_post.17"  # without n_layers: the block-count position
    with pytest.raises(LayerIndexError, match=r"valid hidden indices are 0\.\.18 \(0 is the embeddings, 18 is ln_final"):
        hidden_index_site(19, 18)


def test_relative_depth_is_one_axis_for_blocks_and_hidden_states():
    n = 18
    assert relative_depth(None, n) == 0.0 and relative_depth(n - 1, n) == 1.0
    # hidden state i of MEXA / DoLa / tuned-lens lands where its block does: i / L
    for i in range(n + 1):
        assert relative_depth(layer_from_hidden_index(i, n), n) == pytest.approx(i / n)
        assert layer_at_depth(i / n, n) == layer_from_hidden_index(i, n)
    with pytest.raises(LayerIndexError):
        relative_depth(n, n)
    with pytest.raises(InterlayerError, match=r"\[0, 1\]"):
        layer_at_depth(1.5, n)
