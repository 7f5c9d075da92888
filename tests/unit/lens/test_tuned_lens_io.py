"""tuned-lens checkpoints: imported and exported lenses decode exactly as tuned-lens's own
``TunedLens.forward(h, i)`` at every index (the embeddings included); bad files refused."""

import json

import pytest
import torch
import transformers as tf

import interlayer
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.layers import layer_from_hidden_index
from interlayer.lens.lenses import TunedLens, check_lens_dir, load_lens
from interlayer.lens.tuned_lens_io import is_tuned_lens_dir, write_tuned_lens
from tests.tiny_models import make_tiny, make_tokenizer

IDS = [1, 5, 9, 12, 30, 41, 7]


@pytest.fixture
def hf():
    return make_tiny("llama")


@pytest.fixture
def model(hf):
    return interlayer.load_model(hf)


def randomise_(parameters, seed=1):
    """Non-zero translators: N(0, 0.1) weights and biases."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in parameters:
            p.normal_(0.0, 0.1)


def hidden_states(hf):
    with torch.no_grad():
        return hf(torch.tensor([IDS]), output_hidden_states=True).hidden_states


def peer_lens(hf, directory):
    """A tuned-lens TunedLens with random translators, saved by tuned-lens itself."""
    from tuned_lens.nn.lenses import TunedLens as PeerLens

    peer = PeerLens.from_model(hf)
    randomise_(peer.layer_translators.parameters())
    peer.save(directory)
    return peer


def tiny_llama(**changes):
    config = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    return interlayer.load_model(tf.LlamaForCausalLM(tf.LlamaConfig(**{**config, **changes})).eval())


@pytest.mark.peers
def test_imported_lens_decodes_as_tuned_lens_forward_at_every_index(hf, model, tmp_path):
    peer = peer_lens(hf, tmp_path / "tl")
    assert is_tuned_lens_dir(tmp_path / "tl")
    check_lens_dir(tmp_path / "tl")  # every --tuned-lens option accepts it
    for lens in (TunedLens.from_tuned_lens(tmp_path / "tl", model), load_lens(str(tmp_path / "tl"), model)):
        assert isinstance(lens, TunedLens) and lens.embedding and lens.layers == list(range(model.n_layers - 1))
        decoder, hs = LayerDecoder(model, lens=lens), hidden_states(hf)
        for i in range(model.n_layers):  # hidden_states[i]: 0 the embeddings, i resid_post.(i-1)
            with torch.no_grad():
                theirs = torch.log_softmax(peer.forward(hs[i][0], i), -1)
            ours = decoder.log_probs(hs[i][0], layer_from_hidden_index(i))
            assert torch.allclose(ours, theirs, atol=1e-5), (i, (ours - theirs).abs().max())
            assert not torch.allclose(ours, decoder.log_probs(hs[i][0], model.n_layers - 1), atol=1e-3)  # translated


@pytest.mark.peers
def test_the_index_convention_holds_on_interlayer_sites(hf, tmp_path):
    """interlayer's own store sites, resid_pre.0 and resid_post.0..L-2, decoded in one call
    with layers [None, 0, ..]: the same as tuned-lens on hidden_states[0..L-1]."""
    peer = peer_lens(hf, tmp_path / "tl")
    model = interlayer.load_model(hf, tokenizer=make_tokenizer(tmp_path / "tok"))
    lens = TunedLens.from_tuned_lens(tmp_path / "tl", model)
    sites = ["resid_pre.0"] + [f"resid_post.{l}" for l in range(model.n_layers - 1)]
    acts = interlayer.collect(model, [IDS], sites, progress=False)
    stacked = acts.stack(sites)  # [L, tokens, d]; the store keeps no row for the BOS position
    positions = torch.tensor(acts.to_frame().position.tolist())
    hs = hidden_states(hf)
    assert torch.allclose(stacked, torch.stack([hs[i][0, positions] for i in range(model.n_layers)]), atol=1e-6)
    layers = [layer_from_hidden_index(i) for i in range(model.n_layers)]
    ours = torch.log_softmax(LayerDecoder(model, lens=lens).layer_logits(stacked, layers), -1)
    with torch.no_grad():
        theirs = torch.stack([torch.log_softmax(peer.forward(stacked[i], i), -1) for i in range(model.n_layers)])
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


@pytest.mark.peers
@pytest.mark.parametrize("embedding", [True, False])
def test_exported_lens_loads_in_tuned_lens_and_decodes_the_same(hf, model, tmp_path, embedding):
    from tuned_lens.nn.lenses import TunedLens as PeerLens

    layers = None if embedding else [1]  # without: tuned-lens gets identity translators there
    lens = TunedLens.for_model(model, layers=layers, embedding=embedding)
    randomise_(lens.parameters(), seed=2)
    lens.to_tuned_lens(tmp_path / "out", model)
    peer = PeerLens.from_model_and_pretrained(hf, str(tmp_path / "out"))
    assert len(peer) == model.n_layers and peer.config.unembed_hash == json.loads(
        (tmp_path / "out" / "config.json").read_text())["unembed_hash"]
    decoder, hs = LayerDecoder(model, lens=lens), hidden_states(hf)
    for i in range(model.n_layers):
        layer = layer_from_hidden_index(i)
        with torch.no_grad():
            theirs = torch.log_softmax(peer.forward(hs[i][0], i), -1)
        ours = (decoder.log_probs(hs[i][0], layer) if layer is not None or embedding
                else LayerDecoder(model).log_probs(hs[i][0]))  # no embedding translator: the logit lens
        assert torch.allclose(ours, theirs, atol=1e-5), (i, (ours - theirs).abs().max())
    again = TunedLens.from_tuned_lens(tmp_path / "out", model)  # and back, exactly
    for i in range(model.n_layers):
        layer = layer_from_hidden_index(i)
        if layer is not None or embedding:
            assert torch.equal(again.transform(hs[i][0], layer), lens.transform(hs[i][0], layer))


def test_interlayer_lens_with_an_embedding_translator_round_trips_and_old_lenses_load(model, tmp_path):
    lens = TunedLens.for_model(model, embedding=True)
    randomise_(lens.parameters())
    h = torch.randn(4, model.d_model)
    loaded = TunedLens.load(lens.save(tmp_path / "new"), model)
    assert loaded.embedding and torch.equal(loaded.transform(h, None), lens.transform(h, None))
    assert not torch.equal(lens.transform(h, None), h)
    old = TunedLens.for_model(model, layers=[0, 1])
    randomise_(old.parameters())
    old.save(tmp_path / "old")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["embedding"]  # as lenses saved before the embedding slot
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    back = load_lens(str(tmp_path / "old"), model)
    assert not back.embedding and torch.equal(back.transform(h, 1), old.transform(h, 1))
    with pytest.raises(InterlayerError, match="needs the layer of each hidden state"):
        back.transform(h, None)


def exported(model, directory):
    lens = TunedLens.for_model(model, embedding=True)
    randomise_(lens.parameters())
    return lens.to_tuned_lens(directory, model)


def test_wrong_width_and_layer_count_are_refused_naming_both(model, tmp_path):
    path = exported(model, tmp_path / "tl")
    with pytest.raises(InterlayerError, match="d_model=32.*d_model=48"):
        TunedLens.from_tuned_lens(path, tiny_llama(hidden_size=48))
    with pytest.raises(InterlayerError, match="3 layers.*has 4"):
        load_lens(str(path), tiny_llama(num_hidden_layers=4))
    with pytest.raises(InterlayerError, match="d_model=32.*d_model=48"):
        TunedLens.for_model(model).to_tuned_lens(tmp_path / "x", tiny_llama(hidden_size=48))


def test_truncated_or_unreadable_params_are_refused_naming_the_file(model, tmp_path):
    path = exported(model, tmp_path / "tl")
    params = path / "params.pt"
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    with pytest.raises(InterlayerError, match=f"{params}.* not a readable params.pt"):
        TunedLens.from_tuned_lens(path, model)
    params.write_bytes(b"")
    with pytest.raises(InterlayerError, match="not a readable params.pt"):
        load_lens(str(path), model)
    (path / "config.json").write_text("{not json")
    with pytest.raises(InterlayerError, match="config.json is not readable JSON"):
        TunedLens.from_tuned_lens(path)
    with pytest.raises(InterlayerError, match="is not a saved tuned lens"):
        check_lens_dir(path)  # not recognised as tuned-lens by content, and no lens.safetensors


def test_missing_translators_are_refused(model, tmp_path):
    path = exported(model, tmp_path / "tl")
    state = torch.load(path / "params.pt", weights_only=True)
    del state["2.weight"]
    torch.save(state, path / "params.pt")
    with pytest.raises(InterlayerError, match=r"missing \['2.weight'\]"):
        TunedLens.from_tuned_lens(path, model)


RAN = []


def _payload():
    RAN.append(True)
    return torch.zeros(1)


class Callable:
    def __reduce__(self):
        return (_payload, ())


def test_a_pickled_callable_is_refused_and_never_run(model, tmp_path):
    path = exported(model, tmp_path / "tl")
    state = torch.load(path / "params.pt", weights_only=True)
    state["0.weight"] = Callable()
    torch.save(state, path / "params.pt")
    with pytest.raises(InterlayerError, match=r"params.pt holds objects other than tensors, refused.*weights_only"):
        TunedLens.from_tuned_lens(path, model)
    assert RAN == []


def test_export_never_overwrites_a_foreign_config(model, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 32}))
    with pytest.raises(InterlayerError, match="is not a tuned-lens config"):
        TunedLens.for_model(model).to_tuned_lens(tmp_path / "ckpt", model)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == "llama"
    assert not (tmp_path / "ckpt" / "params.pt").exists()


@pytest.mark.integration
@pytest.mark.demo
@pytest.mark.peers
def test_smollm2_tuned_lens_checkpoint_imports_exactly(tmp_path):
    """The embedded SmolLM2 (a Llama, 30 layers): tuned-lens's own checkpoint, imported."""
    model = interlayer.load_model("smollm2-135m-instruct", device="cpu")
    peer = peer_lens(model.model, tmp_path / "tl")
    lens = load_lens(str(tmp_path / "tl"), model)
    with torch.no_grad():
        hs = model.model(torch.tensor([[1, 504, 3458, 314, 1071]]), output_hidden_states=True).hidden_states
    decoder = LayerDecoder(model, lens=lens)
    for i in range(model.n_layers):
        with torch.no_grad():
            theirs = torch.log_softmax(peer.forward(hs[i][0], i), -1)
        ours = decoder.log_probs(hs[i][0], layer_from_hidden_index(i))
        assert torch.allclose(ours, theirs, atol=1e-5), (i, (ours - theirs).abs().max())


def test_a_translator_without_a_tuned_lens_slot_is_refused(tmp_path):
    pair = (torch.zeros(32, 32), torch.zeros(32))
    with pytest.raises(InterlayerError, match=r"layers \['2'\] have no tuned-lens slot.*blocks 0..1"):
        write_tuned_lens(tmp_path / "tl", {None: pair, 2: pair}, 32, 3)  # block 2 is the model's own output
    assert not (tmp_path / "tl").exists()


def test_decode_without_layers_is_refused_by_a_lens_with_an_embedding_translator():
    """layers=None would silently mean "the embeddings" to such a lens: refused; layers with
    None for the embedding slice decode it through the embedding translator."""
    import interlayer
    from interlayer.decoding import LayerDecoder
    from interlayer.lens import TunedLens
    from tests.tiny_models import make_tiny

    model = interlayer.load_model(make_tiny("llama"))
    lens = TunedLens.for_model(model, embedding=True)
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(std=0.1)
    hidden = torch.randn(2, 3, model.d_model)
    decoder = LayerDecoder(model, lens=lens)
    with pytest.raises(interlayer.InterlayerError, match="embedding output"):
        decoder.decode(hidden)
    got = decoder.decode(hidden, layers=[None, 0], probs=True)
    direct = torch.softmax(model.unembed_resid(lens.transform(hidden[0], None)).float(), -1)
    torch.testing.assert_close(got.probs[0], direct, rtol=1e-5, atol=1e-6)
