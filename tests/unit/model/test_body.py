"""The model body: early stop by truncation (bit for bit the old exception path and a
full pass), ids not moved twice, the attention implementation and the opt-in compile."""

from __future__ import annotations

import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.model import body, passes
from tests.tiny_models import TINY_ARCHITECTURES, make_tiny, make_tokenizer


def _reads(model, sites):
    got: dict[str, torch.Tensor] = {}

    def reader(name):
        def fn(x):
            got[name] = x.detach().clone()
        return fn

    return got, {s: reader(s) for s in sites}


def _capture(model, ids, mask, layer, *, edits=None, resume=None, record=()):
    """Every site up to ``layer`` (ln_final too when ``layer == n_layers``) on a pass that
    stops there, plus what the recorded blocks returned."""
    sites = [s for s in model.sites() if model.site(s).layer <= layer]
    if layer == model.n_layers:
        sites.append("ln_final")
    if resume is not None:
        sites = [s for s in sites if model.site(s).order >= model.site(f"resid_post.{resume[0]}").order]
    got, hooks = _reads(model, sites)
    hooks = {s: [*([edits[s]] if edits and s in edits else []), fn] for s, fn in hooks.items()}
    with model.record_outputs(record) as recorded:
        out = model.forward(ids, mask, hooks=hooks, stop_after_layer=layer, resume=resume)
    assert out is None
    return got, {k: passes._first(v).clone() for k, v in recorded.items()}


def _old_path(monkeypatch):
    """Force the exception path (what every early stop did before truncation)."""
    monkeypatch.setattr(passes, "truncation_slots", lambda model, spec: None)


def _inputs():
    torch.manual_seed(0)
    ids = torch.randint(4, 60, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, 6:] = 0  # right padding
    return ids, mask


def _assert_same(new, old):
    assert new.keys() == old.keys() and new
    for site in old:
        assert torch.equal(new[site], old[site]), site


@pytest.mark.parametrize("arch", sorted(TINY_ARCHITECTURES))
def test_truncated_stop_equals_the_exception_path_and_a_full_pass_bit_for_bit(arch, monkeypatch):
    model = interlayer.load_model(make_tiny(arch))
    ids, mask = _inputs()
    assert body.truncation_slots(model.model, model.spec) is not None
    layers_slot = body.truncation_slots(model.model, model.spec)["layers"]
    before = {name: module for name, module in model.model.named_modules()}
    full, hooks = _reads(model, [*model.sites(), "ln_final"])
    model.forward(ids, mask, hooks=hooks)
    for layer in range(model.n_layers + 1):
        for m in (None, mask):
            new, _ = _capture(model, ids, m, layer)
            with monkeypatch.context() as patch:
                _old_path(patch)
                old, _ = _capture(model, ids, m, layer)
            _assert_same(new, old)
            if m is not None:
                for site in new:
                    assert torch.equal(new[site], full[site]), (layer, site)
    # nothing stays swapped: the same modules, the full layer list, real logits
    assert {name: module for name, module in model.model.named_modules()} == before
    assert len(layers_slot[0]._modules[layers_slot[1]]) == model.n_layers
    assert model.forward(ids, mask).shape == (*ids.shape, model.vocab_size)


@pytest.mark.parametrize("arch", ["gemma3", "llama", "gpt2", "gpt_neox_parallel"])
def test_truncated_stop_with_edits_resume_and_record_equals_the_exception_path(arch, monkeypatch):
    model = interlayer.load_model(make_tiny(arch))
    ids, mask = _inputs()
    v = torch.randn(model.d_model)
    edit_site = "mlp_out.1" if arch != "gpt_neox_parallel" else "attn_out.1"
    edits = {edit_site: lambda x: x + v, "resid_pre.2": lambda x: x * 0.5}
    results = []
    for old in (False, True):
        with monkeypatch.context() as patch:
            if old:
                _old_path(patch)
            got, recorded = _capture(model, ids, mask, 2, edits=edits, record=[0, 1])
            resumed, _ = _capture(model, ids, mask, 2, edits=edits, resume=(0, _recorded_output(model, ids, mask)))
            results.append((got, recorded, resumed))
    (new, new_rec, new_res), (old, old_rec, old_res) = results
    _assert_same(new, old)
    _assert_same(new_rec, old_rec)
    _assert_same(new_res, old_res)
    for site, value in new_res.items():  # resuming after block 0 changes nothing downstream
        assert torch.equal(value, new[site]), site


def _recorded_output(model, ids, mask):
    with model.record_outputs([0]) as recorded:
        model.forward(ids, mask, stop_after_layer=0)
    return recorded[0]


def test_later_blocks_and_the_head_do_not_run_and_a_failing_hook_restores_the_model():
    model = interlayer.load_model(make_tiny("gemma3"))
    ids, mask = _inputs()
    fired: list[str] = []
    hooks = {s: (lambda name: lambda x: fired.append(name))(s) for s in ["resid_post.0", "resid_pre.1", "ln_final"]}
    calls: list[int] = []
    handle = model.unembed.register_forward_hook(lambda *a: calls.append(1))
    assert model.forward(ids, mask, hooks=hooks, stop_after_layer=0) is None
    assert fired == ["resid_post.0"] and calls == []
    fired.clear()
    model.forward(ids, mask, hooks=hooks, stop_after_layer=model.n_layers)
    assert fired == ["resid_post.0", "resid_pre.1", "ln_final"] and calls == []
    handle.remove()

    def boom(x):
        raise RuntimeError("boom")

    layers = model.model.model.layers
    with pytest.raises(RuntimeError, match="boom"):
        model.forward(ids, mask, hooks={"resid_post.0": boom}, stop_after_layer=1)
    assert model.model.model.layers is layers and type(model.model.lm_head) is torch.nn.Linear
    assert type(model.model.model.norm).__name__ == "Gemma3RMSNorm"
    with pytest.raises(interlayer.errors.LayerIndexError):
        model.forward(ids, mask, stop_after_layer=model.n_layers + 1)


def test_truncation_through_a_transformer_bridge(tmp_path, monkeypatch):
    from transformer_lens.model_bridge import TransformerBridge

    hf, tok = make_tiny("llama"), make_tokenizer(tmp_path / "tok")
    plain = interlayer.load_model(hf, tokenizer=tok)
    ids, mask = _inputs()
    expected, _ = _capture(plain, ids, None, 1)
    bridged = interlayer.load_model(TransformerBridge.boot_transformers("llama", hf_model=hf, tokenizer=tok))
    assert body.truncation_slots(bridged.model, bridged.spec) is not None
    for m in (None, mask):
        got, _ = _capture(bridged, ids, m, 1)
        with monkeypatch.context() as patch:
            _old_path(patch)
            old, _ = _capture(bridged, ids, m, 1)
        _assert_same(got, old)
    got, _ = _capture(bridged, ids, None, 1)
    for site, value in expected.items():  # the bridge's own attention sums in another order
        torch.testing.assert_close(got[site], value, atol=1e-5, rtol=0, msg=site)


def test_ids_already_on_the_device_are_not_copied():
    model = interlayer.load_model(make_tiny("llama"))
    ids, mask = _inputs()
    kwargs = model._model_inputs(ids, mask)
    assert kwargs["input_ids"] is ids and kwargs["attention_mask"] is mask
    assert torch.equal(kwargs["position_ids"], (mask.cumsum(-1) - 1).clamp(min=0))
    assert passes._on(ids.int(), torch.device("cpu")).dtype == torch.int32  # moved, never cast
    assert passes._on(ids, torch.device("meta")).device.type == "meta"


def test_attn_implementation_is_checked_before_loading_and_recorded(tmp_path):
    with pytest.raises(InterlayerError, match="valid choices: .*eager.*sdpa"):
        interlayer.load_model(str(tmp_path / "does-not-exist"), attn_implementation="fast")
    make_tiny("gemma3").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    eager = interlayer.load_model(str(tmp_path / "ckpt"), attn_implementation="eager")
    sdpa = interlayer.load_model(str(tmp_path / "ckpt"), attn_implementation="sdpa")
    assert eager.attn_implementation == "eager" and sdpa.attn_implementation == "sdpa"
    ids, mask = _inputs()
    real = mask.bool()  # padding positions attend to nothing; the implementations fill them differently
    torch.testing.assert_close(eager.forward(ids, mask)[real], sdpa.forward(ids, mask)[real], rtol=1e-5, atol=1e-5)
    hf = make_tiny("llama")
    adapter = interlayer.load_model(hf, attn_implementation="eager")  # a loaded object: switched in place
    assert adapter.attn_implementation == "eager" and hf.config._attn_implementation == "eager"
    assert interlayer.load_model(adapter, attn_implementation="sdpa").attn_implementation == "sdpa"


def test_model_options_pass_the_new_flags_only_when_set(monkeypatch):
    from interlayer.model import loading
    from interlayer.model.options import ModelOptions

    seen = []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(k) or "model")
    ModelOptions().load()
    ModelOptions(attn_implementation="eager", compile=True).load()
    assert "compile" not in seen[0] and "attn_implementation" not in seen[0]
    assert seen[1]["compile"] is True and seen[1]["attn_implementation"] == "eager"


def test_compile_refuses_cuda_graph_modes_and_unknown_ones():
    model = interlayer.load_model(make_tiny("llama"))
    for mode in ("reduce-overhead", "max-autotune", "fastest"):
        with pytest.raises(InterlayerError, match="valid choices"):
            model.compile(mode)
    assert not model.compiled


@pytest.mark.slow
def test_compiled_blocks_match_eager_with_hooks_at_every_kind_and_varying_shapes():
    """Hooks attached after the blocks compiled fire (and stop firing once removed):
    Dynamo does not guard on the hooks of submodules it inlines, so a hooked block runs
    eagerly."""
    eager = interlayer.load_model(make_tiny("gemma3"))
    compiled = interlayer.load_model(make_tiny("gemma3"), compile=True)
    assert compiled.compiled and not eager.compiled
    v = torch.randn(eager.d_model) * 5
    torch.manual_seed(1)
    for shape in [(3, 9), (2, 12)]:  # compiled with no hook at all, for two shapes
        ids = torch.randint(4, 60, shape)
        torch.testing.assert_close(compiled.forward(ids), eager.forward(ids), rtol=1e-5, atol=1e-5)
    plans = [((3, 9), None, {"mlp_out.1": lambda x: x + v, "resid_pre.2": lambda x: x * 0.5}),
             ((2, 12), 1, {"resid_mid.0": lambda x: x - v}), ((4, 5), None, {"attn_out.2": lambda x: x * 2}),
             ((3, 9), None, {}), ((3, 7), 2, {"resid_post.1": lambda x: x + v})]
    for shape, layer, edits in plans:
        ids = torch.randint(4, 60, shape)
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        # first with no hook, so the hooked pass below meets code compiled without hooks
        torch.testing.assert_close(compiled.forward(ids, mask), eager.forward(ids, mask), rtol=1e-5, atol=1e-5)
        reads = [s for s in eager.sites() if layer is None or eager.site(s).layer <= layer]
        outs = []
        for model in (eager, compiled):
            got, hooks = _reads(model, reads)
            for site, fn in edits.items():
                hooks[site] = [fn, *([hooks[site]] if site in hooks else [])]
            outs.append((model.forward(ids, mask, hooks=hooks, stop_after_layer=layer), got))
        (logits, want), (clogits, have) = outs
        if layer is None:
            torch.testing.assert_close(clogits, logits, rtol=1e-5, atol=1e-5)
        assert have.keys() == want.keys()
        for site in want:
            torch.testing.assert_close(have[site], want[site], rtol=1e-5, atol=1e-5, msg=site)
    compiled.uncompile()
    assert not compiled.compiled and all("forward" not in block.__dict__ for block in compiled.blocks)
