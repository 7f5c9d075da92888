"""The names other libraries give interlayer's hook sites, converted both ways.

interlayer names a place in the forward pass by a site: ``resid_pre.l``, ``attn_out.l``,
``resid_mid.l``, ``mlp_out.l``, ``resid_post.l`` (block ``l``'s output; block index ``l`` =
0..L-1, :mod:`interlayer.layers`) and ``ln_final`` (the final norm's output). Each pair
below converts to and from one ecosystem's name for the same tensor; ``to_*`` accepts a
site name (TransformerLens aliases too) or a :class:`~interlayer.Site`, ``from_*``
returns the canonical site name. Every converter takes the model's ``n_layers``, because
several numberings shift at the last block.

* Hugging Face ``hidden_states[l + 1]`` (l < L-1): :func:`to_hf_hidden_state`, :func:`from_hf_hidden_state`;
* TransformerLens ``blocks.l.hook_resid_post``: :func:`to_transformer_lens`, :func:`from_transformer_lens`;
* TransformerBridge ``blocks.l.hook_out``: :func:`to_bridge`, :func:`from_bridge`;
* sparsify ``layers.l``: :func:`to_sparsify`, :func:`from_sparsify`;
* Gemma Scope 2 ``model.layers.l.output``: :func:`to_gemma_scope`, :func:`from_gemma_scope`;
* tuned-lens translator ``l + 1`` (l < L-1): :func:`to_tuned_lens`, :func:`from_tuned_lens`;
* llama.cpp ``direction.l`` (l >= 1): :func:`to_llama_cpp`, :func:`from_llama_cpp`;
* repeng layer id ``l`` (or ``l - L``): :func:`to_repeng`, :func:`from_repeng`.

The documentation's concepts page ("Hook sites and layer numbering") has the table with
each ecosystem's trap.

A name with no interlayer site (a sublayer's input after its pre-norm, attention heads
before their output projection) is an error that says what it is and what is nearest.
"""

from __future__ import annotations

import re

from .errors import InterlayerError, LayerIndexError, UnknownSiteError, choices
from .layers import gguf_direction, layer_from_gguf_direction
from .model.architectures import ARCHITECTURES, ArchSpec
from .model.sites import LN_FINAL, SITE_KINDS, Site, parse_site

__all__ = ["from_bridge", "from_gemma_scope", "from_hf_hidden_state", "from_llama_cpp", "from_repeng",
           "from_sparsify", "from_transformer_lens", "from_tuned_lens", "to_bridge", "to_gemma_scope",
           "to_hf_hidden_state", "to_llama_cpp", "to_repeng", "to_sparsify", "to_transformer_lens", "to_tuned_lens"]


def _n(n_layers: int) -> int:
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise InterlayerError(f"n_layers must be a whole number >= 1 (the model's block count), got {n_layers!r}")
    return n_layers


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InterlayerError(f"{what} must be a whole number, got {value!r}")
    return value


def _site(site: str | Site, n_layers: int) -> Site:
    return parse_site(site, _n(n_layers))


def _only(site: Site, kinds: tuple[str, ...], ecosystem: str, valid: str) -> None:
    if site.kind not in kinds:
        raise UnknownSiteError(f"{site.name} has no {ecosystem} name; {ecosystem} names {valid}")


# ------------------------------------------------------------------ Hugging Face
def to_hf_hidden_state(site: str | Site, n_layers: int) -> int:
    """The index ``i`` of ``output_hidden_states`` that holds ``site``: ``resid_pre.l`` is
    ``hidden_states[l]`` (the embeddings at 0), ``resid_post.l`` is ``hidden_states[l + 1]``
    and ``ln_final`` is ``hidden_states[L]``. ``resid_post.(L-1)`` has none: Hugging Face
    takes its last hidden state after the final norm, so that index is ``ln_final``."""
    s = _site(site, n_layers)
    if s.kind == LN_FINAL:
        return n_layers
    _only(s, ("resid_pre", "resid_post"), "hidden_states",
          f"only the residual stream between blocks (resid_pre.0, resid_post.0..{n_layers - 2}, ln_final)")
    if s.kind == "resid_pre":
        return s.layer
    if s.layer == n_layers - 1:
        raise LayerIndexError(f"resid_post.{s.layer} has no hidden_states index: Hugging Face's last hidden state "
                              f"hidden_states[{n_layers}] is taken after the final norm (ln_final); read "
                              f"resid_post.{s.layer} from the store, or hook model.layers[{s.layer}]")
    return s.layer + 1


def from_hf_hidden_state(index: int, n_layers: int) -> str:
    """The site of ``hidden_states[index]`` (negative indices count from the end, as in
    Python): ``resid_pre.0`` at 0, ``resid_post.(i-1)`` for 1..L-1, ``ln_final`` at L."""
    n = _n(n_layers)
    index = _whole(index, "a hidden_states index")
    if not -(n + 1) <= index <= n:
        raise LayerIndexError(f"hidden_states[{index}] is out of range; a {n}-layer model has hidden_states[0..{n}] "
                              f"(0 the embeddings, i resid_post.(i-1), {n} ln_final after the final norm)")
    index %= n + 1
    return "resid_pre.0" if index == 0 else LN_FINAL if index == n else f"resid_post.{index - 1}"


# ------------------------------------------------------------------ TransformerLens and its Bridge
_TL = re.compile(r"^blocks\.-?\d+\.(?:hook_[a-z_]+|ln2\.hook_normalized)$")
_TL_FINAL = "ln_final.hook_normalized"


def to_transformer_lens(site: str | Site, n_layers: int) -> str:
    """The ``HookedTransformer`` hook name of ``site``: ``blocks.l.hook_<kind>``, and
    ``ln_final.hook_normalized`` for ``ln_final`` (the same place; TransformerLens takes
    it before the norm's weight, which ``from_pretrained`` folds into the unembedding)."""
    return _site(site, n_layers).transformer_lens_name


def from_transformer_lens(name: str, n_layers: int) -> str:
    """The site of a ``HookedTransformer`` hook name (``blocks.l.hook_resid_post``,
    ``hook_resid_pre``/``mid``, ``hook_attn_out``, ``hook_mlp_out``, ``ln2.hook_normalized`` (``mlp_in.l``),
    ``ln_final.hook_normalized``)."""
    text = str(name).strip()
    if not (_TL.match(text) or text == _TL_FINAL):
        raise UnknownSiteError(f"{name!r} is not a TransformerLens hook interlayer has; valid forms: "
                               f"'blocks.<l>.hook_<kind>' with kind one of {choices(SITE_KINDS)}, or {_TL_FINAL!r}")
    return _site(text, n_layers).name


_BRIDGE = {"resid_pre": "hook_in", "attn_out": "hook_attn_out", "resid_mid": "ln2.hook_in",
           "mlp_in": "ln2.hook_out", "mlp_out": "hook_mlp_out", "resid_post": "hook_out"}
"""TransformerBridge (TransformerLens 3) names inside ``blocks.l``: its own hook points
for the residual stream, and for the sublayers the aliases, which the Bridge points at
the post-norm on Gemma 2/3 (``ln1_post``/``ln2_post``) and at ``attn``/``mlp`` elsewhere."""
_BRIDGE_FINAL = "ln_final.hook_out"
_BRIDGE_NAME = re.compile(r"^blocks\.(?P<layer>-?\d+)\.(?P<rest>[a-z_0-9.]+)$")


def to_bridge(site: str | Site, n_layers: int) -> str:
    """The ``TransformerBridge`` hook name of ``site``: ``blocks.l.hook_out`` for
    ``resid_post.l``, ``blocks.l.hook_in`` for ``resid_pre.l``, ``blocks.l.ln2.hook_in``
    for ``resid_mid.l``, the aliases ``blocks.l.hook_attn_out``/``hook_mlp_out``, and
    ``ln_final.hook_out``. The ``HookedTransformer`` names are aliases on the Bridge too."""
    s = _site(site, n_layers)
    return _BRIDGE_FINAL if s.kind == LN_FINAL else f"blocks.{s.layer}.{_BRIDGE[s.kind]}"


def from_bridge(name: str, n_layers: int) -> str:
    """The site of a ``TransformerBridge`` hook name: its own names (:func:`to_bridge`) or
    the ``HookedTransformer`` aliases it also registers."""
    text = str(name).strip()
    if text == _BRIDGE_FINAL:
        return LN_FINAL
    if text == _TL_FINAL:
        raise UnknownSiteError(f"{text!r} on the Bridge is x / rms before the final norm's weight; interlayer's "
                               f"ln_final is the norm's output, {_BRIDGE_FINAL!r}")
    match = _BRIDGE_NAME.match(text)
    if match is not None:
        kinds = {v: k for k, v in _BRIDGE.items()}
        rest = match.group("rest")
        if rest in kinds:
            return _site(f"{kinds[rest]}.{match.group('layer')}", n_layers).name
        if rest in ("attn.hook_out", "mlp.hook_out"):
            alias = "hook_attn_out" if rest.startswith("attn") else "hook_mlp_out"
            raise UnknownSiteError(f"{text!r} is the sublayer module's own output, before the post-norm on Gemma 2/3 "
                                   f"and OLMo-2; use the alias 'blocks.{match.group('layer')}.{alias}', which the "
                                   "Bridge points at what the sublayer adds to the residual stream on every "
                                   "architecture")
        if _TL.match(text):
            return from_transformer_lens(text, n_layers)
    raise UnknownSiteError(f"{name!r} is not a TransformerBridge hook interlayer has; valid forms: "
                           f"'blocks.<l>.<hook>' with hook one of {choices(_BRIDGE.values())} (or a "
                           f"HookedTransformer alias 'blocks.<l>.hook_<kind>'), or {_BRIDGE_FINAL!r}")


# ------------------------------------------------------------------ sparsify
def _spec(model_type: str | None) -> ArchSpec:
    if model_type is None:
        return ARCHITECTURES["llama"]
    if model_type not in ARCHITECTURES:
        raise InterlayerError(f"unknown model_type {model_type!r}; valid: {choices(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]


def _sparsify_names(spec: ArchSpec) -> tuple[str, str | None]:
    """sparsify's names relative to ``model.base_model``: the block list, the embedding
    (``None`` where the embedding's output is not ``resid_pre.0``: GPT-2 adds positions)."""
    embed = None if spec.family == "gpt2" else spec.embed.split(".", 1)[1]
    return spec.layers.split(".", 1)[1], embed


def to_sparsify(site: str | Site, n_layers: int, model_type: str | None = None) -> str:
    """sparsify's hookpoint of ``site`` (a module name under ``model.base_model``; its SAEs
    read the module's output): ``layers.l`` for ``resid_post.l``, the sublayer module for
    ``attn_out.l``/``mlp_out.l`` (``layers.l.mlp`` on Llama-like models,
    ``layers.l.post_feedforward_layernorm`` on Gemma 2/3), ``embed_tokens`` for
    ``resid_pre.0``. ``model_type`` (Hugging Face's ``config.model_type``) picks the
    module names; the default is the Llama layout."""
    s, spec = _site(site, n_layers), _spec(model_type)
    blocks, embed = _sparsify_names(spec)
    if s.kind == "resid_pre" and s.layer == 0 and embed is not None:
        return embed
    if s.kind == "mlp_in":  # a transcoder on the MLP module reads its input
        return f"{blocks}.{s.layer}.{spec.mlp_in}"
    _only(s, ("resid_post", "attn_out", "mlp_out"), "sparsify",
          f"module outputs: {blocks}.<l> (resid_post.l), the sublayers {blocks}.<l>.{spec.attn_out} and "
          f"{blocks}.<l>.{spec.mlp_out}" + (f", {embed} (resid_pre.0)" if embed else ""))
    sub = {"resid_post": "", "attn_out": f".{spec.attn_out}", "mlp_out": f".{spec.mlp_out}"}[s.kind]
    return f"{blocks}.{s.layer}{sub}"


def from_sparsify(hookpoint: str, n_layers: int, model_type: str | None = None, *,
                  transcoder_input: bool = False) -> str:
    """The site of a sparsify hookpoint (the inverse of :func:`to_sparsify`). A
    transcoder trained on ``layers.l.mlp`` reads that module's *input* (after the pre-MLP
    norm) and predicts its output: with ``transcoder_input`` the MLP hookpoint names the
    input side, ``mlp_in.l``; without it, the output side (``mlp_out.l`` on Llama-like models)."""
    spec = _spec(model_type)
    text = str(hookpoint).strip()
    mlp_in = re.match(rf"^{re.escape(_sparsify_names(spec)[0])}\.(?P<layer>\d+)\.{re.escape(spec.mlp_in)}$", text)
    if transcoder_input and mlp_in is not None:
        return _site(f"mlp_in.{mlp_in.group('layer')}", n_layers).name
    blocks, embed = _sparsify_names(spec)
    text = str(hookpoint).strip()
    if embed is not None and text == embed:
        return "resid_pre.0"
    match = re.match(rf"^{re.escape(blocks)}\.(?P<layer>\d+)(?:\.(?P<sub>[a-z_.]+))?$", text)
    if match is not None:
        sub, layer = match.group("sub"), match.group("layer")
        kinds = {None: "resid_post", spec.attn_out: "attn_out", spec.mlp_out: "mlp_out"}
        if sub in kinds:
            return _site(f"{kinds[sub]}.{layer}", n_layers).name
        if sub in ("mlp", "self_attn") and spec.mlp_out != "mlp":
            kind = "mlp_out" if sub == "mlp" else "attn_out"
            right = spec.mlp_out if sub == "mlp" else spec.attn_out
            raise UnknownSiteError(f"sparsify hookpoint {text!r} on {spec.family} is the sublayer before its "
                                   f"post-norm, which interlayer has no site for; {kind}.{layer} is "
                                   f"{blocks}.{layer}.{right}" + (f" (as a transcoder's input, mlp_in.{layer}: pass "
                                   "transcoder_input=True)" if sub == "mlp" else ""))
    raise UnknownSiteError(f"sparsify hookpoint {hookpoint!r} has no interlayer site; valid forms: '{blocks}.<l>', "
                           f"'{blocks}.<l>.{spec.attn_out}', '{blocks}.<l>.{spec.mlp_out}'"
                           + (f", {embed!r}" if embed else "") + f" (model_type {model_type or 'llama'!r})")


# ------------------------------------------------------------------ Gemma Scope 2
_GEMMA_SCOPE = {".output": "resid_post", ".post_feedforward_layernorm.output": "mlp_out",
                ".pre_feedforward_layernorm.output": "mlp_in"}
_GEMMA_SCOPE_NAME = re.compile(r"^model\.layers\.(?P<layer>\d+)(?P<rest>(?:\.[a-z_]+)*\.(?:output|input))$")
_GEMMA_SCOPE_ELSEWHERE = {
    ".self_attn.o_proj.input": "the attention heads' concatenated outputs before o_proj (TransformerLens "
                               "blocks.{l}.attn.hook_z, width n_heads * head_dim), where Gemma Scope 2's attn_out "
                               "SAEs read; interlayer's attn_out.{l} is after o_proj and the post-attention norm",
}


def to_gemma_scope(site: str | Site, n_layers: int) -> str:
    """Gemma Scope 2's ``hf_hook_point_in``/``out`` for ``site`` (Hugging Face module
    naming, ``<module>.output``): ``model.layers.l.output`` for ``resid_post.l``,
    ``model.layers.l.post_feedforward_layernorm.output`` for ``mlp_out.l`` (also a
    transcoder's output) and ``model.layers.l.pre_feedforward_layernorm.output`` for ``mlp_in.l`` (a
    transcoder's input). Its attn_out SAEs read no interlayer site (see :func:`from_gemma_scope`)."""
    s = _site(site, n_layers)
    _only(s, tuple(_GEMMA_SCOPE.values()), "Gemma Scope 2", "resid_post.l (model.layers.l.output), mlp_out.l "
          "(model.layers.l.post_feedforward_layernorm.output) and mlp_in.l "
          "(model.layers.l.pre_feedforward_layernorm.output); its attn_out SAEs read "
          "model.layers.l.self_attn.o_proj.input, before the output projection, which is no interlayer site")
    return f"model.layers.{s.layer}" + {v: k for k, v in _GEMMA_SCOPE.items()}[s.kind]


def from_gemma_scope(hook_point: str, n_layers: int) -> str:
    """The site of a Gemma Scope 2 ``hf_hook_point_in``/``out`` (the inverse of
    :func:`to_gemma_scope`); the hook points it uses that interlayer has no site for are
    errors saying what they are."""
    text = str(hook_point).strip()
    match = _GEMMA_SCOPE_NAME.match(text)
    if match is not None:
        layer, rest = match.group("layer"), match.group("rest")
        if rest in _GEMMA_SCOPE:
            return _site(f"{_GEMMA_SCOPE[rest]}.{layer}", n_layers).name
        if rest in _GEMMA_SCOPE_ELSEWHERE:
            what = _GEMMA_SCOPE_ELSEWHERE[rest].format(l=layer)
            raise UnknownSiteError(f"Gemma Scope 2 hook point {text!r} is {what}; interlayer has no site there")
    raise UnknownSiteError(f"Gemma Scope 2 hook point {hook_point!r} has no interlayer site; valid forms: "
                           "'model.layers.<l>.output' (resid_post.l), "
                           "'model.layers.<l>.post_feedforward_layernorm.output' (mlp_out.l), "
                           "'model.layers.<l>.pre_feedforward_layernorm.output' (mlp_in.l)")


# ------------------------------------------------------------------ tuned-lens
def to_tuned_lens(site: str | Site, n_layers: int) -> int:
    """The tuned-lens translator index that reads ``site``: ``TunedLens.forward(h, idx)``
    is trained on ``hidden_states[idx]`` for idx = 0..L-1, so ``resid_pre.l`` is ``l`` and
    ``resid_post.l`` is ``l + 1``; ``resid_post.(L-1)`` has no translator (tuned-lens uses
    the model's own logits there)."""
    s = _site(site, n_layers)
    _only(s, ("resid_pre", "resid_post"), "tuned-lens translator", f"resid_pre.0 (0) and resid_post.l (l + 1) "
          f"for l = 0..{n_layers - 2}")
    if s.kind == "resid_post" and s.layer == n_layers - 1:
        raise LayerIndexError(f"resid_post.{s.layer} has no tuned-lens translator: a {n_layers}-layer lens has "
                              f"translators 0..{n_layers - 1} for hidden_states[0..{n_layers - 1}], and the last "
                              "hidden state is decoded by the model itself")
    return s.layer + (s.kind == "resid_post")


def from_tuned_lens(index: int, n_layers: int) -> str:
    """The site translator ``index`` (0..L-1) reads: ``resid_pre.0`` (the embeddings) at 0,
    else ``resid_post.(index - 1)``."""
    n, index = _n(n_layers), _whole(index, "a translator index")
    if not 0 <= index < n:
        raise LayerIndexError(f"translator {index} is out of range; a {n}-layer tuned lens has translators 0..{n - 1} "
                              "(0 reads the embeddings, i reads resid_post.(i-1))")
    return "resid_pre.0" if index == 0 else f"resid_post.{index - 1}"


# ------------------------------------------------------------------ llama.cpp and repeng
def to_llama_cpp(site: str | Site, n_layers: int) -> int:
    """The ``N`` of llama.cpp's control-vector tensor ``direction.N`` for ``resid_post.N``
    (llama.cpp adds it to 0-based block ``N``'s output; N = 1..L-1, block 0 is never steered)."""
    s = _site(site, n_layers)
    _only(s, ("resid_post",), "llama.cpp", "block outputs only (direction.N is added to resid_post.N)")
    return gguf_direction(s.layer, n_layers)


def from_llama_cpp(number: int, n_layers: int) -> str:
    """The site llama.cpp's ``direction.N`` is added to: ``resid_post.N`` (N = 1..L-1)."""
    return f"resid_post.{layer_from_gguf_direction(number, _n(n_layers))}"


def to_repeng(site: str | Site, n_layers: int) -> int:
    """repeng's layer id for ``resid_post.l``: ``l`` (``ControlModel`` adds a vector to
    ``model.layers[l]``'s output; ``export_gguf`` writes it as ``direction.l``). Its training
    reads ``hidden_states[l + 1]``: for ``l = L - 1`` that is ``ln_final``, after the final norm."""
    s = _site(site, n_layers)
    _only(s, ("resid_post",), "repeng", "block outputs only (layer id l is model.layers[l]'s output)")
    return s.layer


def from_repeng(layer_id: int, n_layers: int) -> str:
    """The site repeng's layer id acts on: ``resid_post.l``; negative ids count from the end
    (``-1`` is block L-1), as repeng normalises them (``len(layers) + i``)."""
    n, layer_id = _n(n_layers), _whole(layer_id, "a repeng layer id")
    if not -n <= layer_id < n:
        raise LayerIndexError(f"repeng layer id {layer_id} is out of range; a {n}-layer model has ids 0..{n - 1} "
                              f"(or -{n}..-1 from the end)")
    return f"resid_post.{layer_id % n}"
