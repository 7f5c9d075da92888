"""interlayer.naming: each ecosystem's name for a site, checked against the real thing where
it is installed (Hugging Face, TransformerLens and its Bridge, SAELens's Gemma Scope 2
names) and against the peer's own rule, reimplemented from its source, where it is not
(sparsify, tuned-lens, llama.cpp, repeng)."""

from __future__ import annotations

import json
import logging
import tempfile

import numpy as np
import pytest
import torch

import interlayer
from interlayer import naming
from interlayer.errors import InterlayerError, LayerIndexError, UnknownSiteError
from interlayer.layers import hidden_index_site
from tests.tiny_models import make_tiny, make_tokenizer

KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")


def _every_site(n_layers: int) -> list[str]:
    return [f"{kind}.{layer}" for layer in range(n_layers) for kind in KINDS] + ["ln_final"]


def _run(name: str, sites: list[str], ids: torch.Tensor, seed: int = 0):
    hf = make_tiny(name, seed)
    model = interlayer.ModelAdapter(hf)
    _, acts = model.run(input_ids=ids, read=sites)
    return hf, model, acts


def _module_outputs(hf: torch.nn.Module, names: list[str], ids: torch.Tensor, root=None) -> dict[str, torch.Tensor]:
    """Each named module's output (its first element when a tuple), as a forward hook sees it."""
    root = root if root is not None else hf
    seen, handles = {}, []
    for name in names:
        def hook(module, args, output, name=name):
            seen[name] = output[0] if isinstance(output, tuple) else output
        handles.append(root.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            hf(input_ids=ids)
    finally:
        for handle in handles:
            handle.remove()
    return seen


IDS = torch.tensor([[1, 5, 9, 12, 30, 7]])


# ------------------------------------------------------------------ Hugging Face
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_hf_hidden_states_are_resid_post_l_at_l_plus_1_and_ln_final_last(arch):
    sites = [f"resid_post.{l}" for l in range(3)] + ["resid_pre.0", "ln_final"]
    hf, model, acts = _run(arch, sites, IDS)
    L = model.n_layers
    with torch.no_grad():
        hidden = hf(input_ids=IDS, output_hidden_states=True).hidden_states
    assert len(hidden) == L + 1
    for i in range(L + 1):
        site = naming.from_hf_hidden_state(i, L)
        assert torch.allclose(acts[site], hidden[i], atol=1e-5), (i, site)
        assert naming.to_hf_hidden_state(site, L) == i and hidden_index_site(i, L) == site
    assert naming.from_hf_hidden_state(-1, L) == "ln_final" and naming.from_hf_hidden_state(-(L + 1), L) == "resid_pre.0"
    # the trap: the last hidden state is after the final norm, not block L-1's output
    assert not torch.allclose(acts[f"resid_post.{L - 1}"], hidden[L], atol=1e-3)
    with pytest.raises(LayerIndexError, match=rf"resid_post\.{L - 1} has no hidden_states index: .* after the final norm"):
        naming.to_hf_hidden_state(f"resid_post.{L - 1}", L)
    assert naming.to_hf_hidden_state("resid_pre.2", L) == 2  # a block's input is the previous block's output


def test_mexa_reads_the_hidden_states_hugging_face_reports():
    from interlayer.probes.mexa import hidden_state_sites

    model = interlayer.ModelAdapter(make_tiny("llama"))
    L = model.n_layers
    assert hidden_state_sites(model) == [naming.from_hf_hidden_state(i, L) for i in range(L + 1)]


# ------------------------------------------------------------------ TransformerLens
def test_transformer_lens_names_are_hooks_of_a_hooked_transformer():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=3, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_mlp=32, d_vocab=20,
                                  act_fn="gelu", normalization_type="RMS")
    hooked = HookedTransformer(cfg)
    for site in _every_site(3):
        name = naming.to_transformer_lens(site, 3)
        assert name in hooked.hook_dict, name
        assert naming.from_transformer_lens(name, 3) == site
    assert naming.to_transformer_lens("blocks.2.hook_mlp_out", 3) == "blocks.2.hook_mlp_out"
    with pytest.raises(UnknownSiteError, match=r"'layers\.2' is not a TransformerLens hook .*'blocks\.<l>\.hook_<kind>'"):
        naming.from_transformer_lens("layers.2", 3)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_bridge_names_hold_the_same_values(arch):
    from transformer_lens.model_bridge import TransformerBridge

    sites = _every_site(3)
    hf, model, acts = _run(arch, sites, IDS)
    other = make_tiny(arch)  # the same weights (same seed); the Bridge wraps its own copy
    if arch == "llama":  # a final norm whose weight is not 1 tells its output from x / rms
        for m in (hf, other):
            m.model.norm.weight.data.mul_(1.5)
        _, acts = model.run(input_ids=IDS, read=sites)
    with tempfile.TemporaryDirectory() as folder:
        bridge = TransformerBridge.boot_transformers("tiny", hf_model=other, device="cpu",
                                                     tokenizer=make_tokenizer(folder))
    with torch.no_grad():
        _, cache = bridge.run_with_cache(IDS)
    for site in sites:
        name = naming.to_bridge(site, 3)
        assert torch.allclose(cache[name], acts[site], atol=1e-5), (site, name)
        assert naming.from_bridge(name, 3) == site
        alias = naming.to_transformer_lens(site, 3)
        if site != "ln_final":  # the HookedTransformer names are aliases on the Bridge
            assert torch.allclose(cache[alias], acts[site], atol=1e-5) and naming.from_bridge(alias, 3) == site
    if arch == "llama":
        assert not torch.allclose(cache["ln_final.hook_normalized"], acts["ln_final"], atol=1e-3)
    with pytest.raises(UnknownSiteError, match="before the final norm's weight"):
        naming.from_bridge("ln_final.hook_normalized", 3)
    if arch == "gemma3":  # the sublayer module's own output is before Gemma's post-norm
        assert not torch.allclose(cache["blocks.1.mlp.hook_out"], acts["mlp_out.1"], atol=1e-3)
    with pytest.raises(UnknownSiteError, match=r"use the alias 'blocks\.1\.hook_mlp_out'"):
        naming.from_bridge("blocks.1.mlp.hook_out", 3)


# ------------------------------------------------------------------ sparsify (EleutherAI/sparsify, not installed)
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_sparsify_hookpoints_name_modules_under_base_model(arch):
    # sparsify/trainer.py: a hookpoint is a module name under model.base_model (the default ones
    # f"{layers_name}.{i}", layers_name from utils.get_layer_list); its SAE reads the module's
    # output, the first element of a tuple
    sites = [f"{k}.{l}" for l in range(3) for k in ("resid_post", "attn_out", "mlp_out")] + ["resid_pre.0"]
    hf, model, acts = _run(arch, sites, IDS)
    model_type = hf.config.model_type
    if arch == "gpt2":
        sites.remove("resid_pre.0")  # GPT-2's wte output lacks the position embeddings
        with pytest.raises(UnknownSiteError, match="resid_pre.0 has no sparsify name"):
            naming.to_sparsify("resid_pre.0", 3, model_type)
    names = {site: naming.to_sparsify(site, 3, model_type) for site in sites}
    outputs = _module_outputs(hf, list(names.values()), IDS, root=hf.base_model)
    for site, name in names.items():
        assert torch.allclose(outputs[name], acts[site], atol=1e-5), (site, name)
        assert naming.from_sparsify(name, 3, model_type) == site
    layer_lists = [n for n, m in hf.base_model.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == 3]
    assert names["resid_post.1"] == f"{layer_lists[0]}.1"
    if arch == "gemma3":
        assert names["mlp_out.1"] == "layers.1.post_feedforward_layernorm"
        raw = _module_outputs(hf, ["layers.1.mlp"], IDS, root=hf.base_model)["layers.1.mlp"]
        assert not torch.allclose(raw, acts["mlp_out.1"], atol=1e-3)
        with pytest.raises(UnknownSiteError, match=r"'layers\.1\.mlp' on gemma3 is the sublayer before its post-norm"):
            naming.from_sparsify("layers.1.mlp", 3, model_type)
    else:
        assert names["mlp_out.1"].endswith(".1.mlp")
        assert names["resid_post.1"] in ("layers.1", "h.1")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sparsify_mlp_hookpoint_as_transcoder_input_is_mlp_in(arch):
    hf, model, acts = _run(arch, ["mlp_in.1"], IDS)
    model_type = hf.config.model_type
    assert naming.from_sparsify("layers.1.mlp", 3, model_type, transcoder_input=True) == "mlp_in.1"
    assert naming.to_sparsify("mlp_in.1", 3, model_type) == "layers.1.mlp"
    seen = {}
    handle = hf.base_model.layers[1].mlp.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0]))
    hf(IDS)
    handle.remove()
    assert torch.allclose(seen["x"], acts["mlp_in.1"], atol=1e-6)


# ------------------------------------------------------------------ Gemma Scope 2
def test_gemma_scope_2_hook_points_are_hf_module_outputs():
    sites = [f"{k}.{l}" for l in range(3) for k in ("resid_post", "mlp_out", "mlp_in")]
    hf, model, acts = _run("gemma3", sites, IDS)
    names = {site: naming.to_gemma_scope(site, 3) for site in sites}
    assert names["resid_post.1"] == "model.layers.1.output"
    outputs = _module_outputs(hf, [n.removesuffix(".output") for n in names.values()], IDS)
    for site, name in names.items():
        assert torch.allclose(outputs[name.removesuffix(".output")], acts[site], atol=1e-5), (site, name)
        assert naming.from_gemma_scope(name, 3) == site


@pytest.mark.peers
def test_gemma_scope_2_names_as_sae_lens_records_them():
    # SAELens is pinned in the test environment (Makefile SAELENS): a missing loader is a failure
    from sae_lens.loading import pretrained_sae_loaders as loaders

    infer = loaders._infer_gemma_3_raw_cfg_dict
    repo = "google/gemma-scope-2-270m-pt"

    def hook_in(folder: str) -> str:
        return infer(repo, f"{folder}/layer_2_width_16k_l0_small")["hf_hook_point_in"]

    assert naming.from_gemma_scope(hook_in("resid_post"), 3) == "resid_post.2"
    assert naming.from_gemma_scope(hook_in("mlp_out"), 3) == "mlp_out.2"
    transcoder = infer(repo, "transcoder/layer_2_width_16k_l0_small_affine")
    assert naming.from_gemma_scope(transcoder["hf_hook_point_out"], 3) == "mlp_out.2"
    assert naming.from_gemma_scope(transcoder["hf_hook_point_in"], 3) == "mlp_in.2"
    with pytest.raises(UnknownSiteError, match=r"before o_proj \(TransformerLens blocks\.2\.attn\.hook_z"):
        naming.from_gemma_scope(hook_in("attn_out"), 3)
    with pytest.raises(UnknownSiteError, match="attn_out.2 has no Gemma Scope 2 name"):
        naming.to_gemma_scope("attn_out.2", 3)


# ------------------------------------------------------------------ tuned-lens (AlignmentResearch/tuned-lens, not installed)
def test_tuned_lens_translator_i_reads_hidden_states_i():
    # tuned_lens/scripts/train_loop.py: hidden_states = output.hidden_states[:-1];
    # for i, h in enumerate(hidden_states): lens(h, idx=i)  (TunedLens.forward(h, idx))
    hf, model, acts = _run("llama", ["resid_pre.0", "resid_post.0", "resid_post.1"], IDS)
    L = model.n_layers
    with torch.no_grad():
        hidden = hf(input_ids=IDS, output_hidden_states=True).hidden_states
    for i, h in enumerate(hidden[:-1]):
        site = naming.from_tuned_lens(i, L)
        assert torch.allclose(acts[site], h, atol=1e-5) and naming.to_tuned_lens(site, L) == i
    with pytest.raises(LayerIndexError, match=r"resid_post\.2 has no tuned-lens translator: a 3-layer lens has "
                                              r"translators 0\.\.2"):
        naming.to_tuned_lens("resid_post.2", L)
    with pytest.raises(LayerIndexError, match="translator 3 is out of range"):
        naming.from_tuned_lens(3, L)


# ------------------------------------------------------------------ llama.cpp (ggml-org/llama.cpp, not installed)
def _llama_cpp_block_vectors(path, n_layer: int) -> dict[int, np.ndarray]:
    """What llama.cpp adds at the end of each block for a control-vector file, by its own rule:
    common/common.cpp common_control_vector_load_one stores direction.N at offset (N-1)*n_embd
    ("layer 1 at [0]") and refuses N = 0; src/llama-adapter.cpp llama_adapter_cvec::apply fills
    tensors[il] for il = 1..n_layer-1 from offset (il-1)*n_embd (init: "there's never a tensor
    for layer 0"); build_cvec(cur, il) adds tensors[il] to block il's output."""
    import gguf

    data, n_embd = np.zeros(0, np.float32), None
    for tensor in gguf.GGUFReader(str(path)).tensors:
        layer_idx = int(tensor.name.split(".", 1)[1])
        assert layer_idx > 0, "llama.cpp refuses direction.0"
        values = np.asarray(tensor.data, np.float32)
        n_embd = values.size
        if data.size < n_embd * layer_idx:
            data = np.concatenate([data, np.zeros(n_embd * layer_idx - data.size, np.float32)])
        data[n_embd * (layer_idx - 1):n_embd * layer_idx] += values
    added = {}
    for il in range(1, n_layer):
        off = n_embd * (il - 1)
        if off + n_embd <= data.size:
            added[il] = data[off:off + n_embd]
    return added


def test_to_gguf_offsets_are_the_blocks_llama_cpp_steers(tmp_path):
    from interlayer.steering import SteeringVector, from_gguf, steer, to_gguf

    hf = make_tiny("llama")
    model = interlayer.ModelAdapter(hf)
    g = torch.Generator().manual_seed(0)
    vector = SteeringVector({1: 0.5 * torch.randn(32, generator=g), 2: 0.5 * torch.randn(32, generator=g)})
    path = to_gguf(vector, tmp_path / "v.gguf")
    added = _llama_cpp_block_vectors(path, model.n_layers)
    assert sorted(added) == [1, 2] and all(np.allclose(added[l], vector[l].numpy()) for l in (1, 2))
    assert [naming.from_llama_cpp(l, 3) for l in added] == ["resid_post.1", "resid_post.2"]
    # llama.cpp's build_cvec at the end of each block (repeng's ControlModule adds to model.layers[l]'s output alike)
    handles = [hf.model.layers[il].register_forward_hook(
        lambda m, a, out, v=torch.from_numpy(v): (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v)
        for il, v in added.items()]
    with torch.no_grad():
        theirs = hf(input_ids=IDS).logits
    for handle in handles:
        handle.remove()
    with torch.no_grad(), steer(model, from_gguf(path, model), 1.0):
        ours = hf(input_ids=IDS).logits
    with torch.no_grad():
        base = hf(input_ids=IDS).logits
    assert torch.allclose(ours, theirs, atol=1e-5) and not torch.allclose(ours, base, atol=1e-3)
    assert naming.to_llama_cpp("resid_post.2", 3) == 2
    with pytest.raises(LayerIndexError, match="never applies a control vector to block 0"):
        naming.to_llama_cpp("resid_post.0", 3)
    with pytest.raises(UnknownSiteError, match="mlp_out.1 has no llama.cpp name"):
        naming.to_llama_cpp("mlp_out.1", 3)


def _gguf_file(path, tensors: dict[str, np.ndarray], fields: dict[str, str]):
    from tests.unit.test_redteam import _gguf

    return _gguf(path, tensors, fields=fields)


def test_files_written_by_older_interlayer_are_read_as_written(tmp_path, caplog):
    from interlayer.steering import SteeringVector, from_gguf
    from interlayer.steering.gguf_io import NUMBERING_KEY

    vector = SteeringVector({0: torch.ones(32) / 32 ** 0.5, 2: -torch.ones(32) / 32 ** 0.5})
    # the old to_gguf: direction.(l+1), interlayer.metadata, no numbering key
    old = _gguf_file(tmp_path / "old.gguf", {f"direction.{l + 1}": v.numpy() for l, v in vector.directions.items()},
                     {"interlayer.metadata": json.dumps(vector.metadata())})
    with caplog.at_level(logging.WARNING):
        back = from_gguf(old)
    assert back.layers == [0, 2] and all(torch.equal(back[l], vector[l]) for l in (0, 2))  # sha256 verified too
    assert "older interlayer, which numbered resid_post.l as direction.(l+1)" in caplog.text
    # a peer's file (repeng's export_gguf, llama.cpp's cvector-generator): direction.N is block N
    foreign = _gguf_file(tmp_path / "peer.gguf", {"direction.1": vector[0].numpy(), "direction.2": vector[2].numpy()}, {})
    assert from_gguf(foreign).layers == [1, 2]
    odd = _gguf_file(tmp_path / "odd.gguf", {"direction.1": vector[0].numpy()}, {NUMBERING_KEY: "block+1"})
    with pytest.raises(InterlayerError, match=r"interlayer\.direction_numbering is 'block\+1'"):
        from_gguf(odd)


# ------------------------------------------------------------------ repeng (vgel/repeng, not installed)
def test_repeng_layer_ids_are_block_indices():
    # repeng/extract.py read_representations: ids normalised as i if i >= 0 else n_layers + i;
    # batched_get_hiddens reads out.hidden_states[layer + 1]; repeng/control.py ControlModel wraps
    # model_layer_list(model)[layer_id] and adds to its output; export_gguf writes direction.{layer}
    hf, model, acts = _run("llama", [f"resid_post.{l}" for l in range(3)] + ["ln_final"], IDS)
    L = model.n_layers
    with torch.no_grad():
        hidden = hf(input_ids=IDS, output_hidden_states=True).hidden_states
    for layer_id in range(-L, L):
        layer = layer_id if layer_id >= 0 else L + layer_id
        site = naming.from_repeng(layer_id, L)
        assert site == f"resid_post.{layer}" and naming.to_repeng(site, L) == layer
        if layer:  # export_gguf's direction.{layer} is the block llama.cpp steers
            assert naming.from_llama_cpp(layer, L) == site
        read = acts["ln_final"] if layer == L - 1 else acts[site]  # the trap: hidden_states[L] is after the norm
        assert torch.allclose(hidden[layer + 1], read, atol=1e-5)
    with pytest.raises(LayerIndexError, match="repeng layer id 3 is out of range"):
        naming.from_repeng(3, L)


# ------------------------------------------------------------------ round trips and bad input
@pytest.mark.parametrize("pair", ["hf_hidden_state", "transformer_lens", "bridge", "sparsify", "gemma_scope",
                                  "tuned_lens", "llama_cpp", "repeng"])
def test_every_converter_round_trips_every_site_it_names(pair):
    to, back = getattr(naming, f"to_{pair}"), getattr(naming, f"from_{pair}")
    named = 0
    for site in _every_site(18):
        try:
            name = to(site, 18)
        except InterlayerError:
            continue
        named += 1
        again = back(name, 18)
        assert to(again, 18) == name, (site, name, again)  # resid_pre.l may come back as resid_post.(l-1)
        assert again == site or site.startswith("resid_pre"), (site, name, again)
    assert named >= 17


def test_bad_input_names_the_valid_forms():
    with pytest.raises(InterlayerError, match="n_layers must be a whole number >= 1"):
        naming.to_repeng("resid_post.1", 0)
    with pytest.raises(LayerIndexError, match=r"hidden_states\[19\] is out of range; a 18-layer model has "
                                              r"hidden_states\[0\.\.18\]"):
        naming.from_hf_hidden_state(19, 18)
    with pytest.raises(InterlayerError, match="a hidden_states index must be a whole number"):
        naming.from_hf_hidden_state("3", 18)
    with pytest.raises(LayerIndexError, match=r"valid layers are 0\.\.17"):
        naming.to_bridge("resid_post.18", 18)
    with pytest.raises(UnknownSiteError, match=r"valid forms: 'layers\.<l>', 'layers\.<l>\.self_attn'"):
        naming.from_sparsify("model.layers.3", 18)
    with pytest.raises(InterlayerError, match="unknown model_type 'mamba'"):
        naming.to_sparsify("resid_post.1", 18, "mamba")
    with pytest.raises(UnknownSiteError, match=r"valid forms: 'model\.layers\.<l>\.output'"):
        naming.from_gemma_scope("layers.3", 18)
    with pytest.raises(UnknownSiteError, match=r"valid forms: 'blocks\.<l>\.<hook>'"):
        naming.from_bridge("blocks.3.attn.hook_z", 18)
