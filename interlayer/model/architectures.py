"""The one place that knows how each architecture lays out its modules.

Everything else in interlayer asks this module where a model keeps its decoder
blocks, final norm, embedding and unembedding, and which submodule of a block
produces each hook site. Supporting a new model family costs one entry in
:data:`ARCHITECTURES`.

Hook sites (per layer ``l``; TransformerLens names in brackets):

* ``resid_pre.l``  [``blocks.l.hook_resid_pre``]:  input of block ``l``.
* ``attn_out.l``   [``blocks.l.hook_attn_out``]:   what the attention sublayer adds to
  the residual stream (after the post-attention norm on Gemma 2/3 and OLMo-2).
* ``resid_mid.l``  [``blocks.l.hook_resid_mid``]:  ``resid_pre + attn_out``, the
  residual stream between attention and MLP.
* ``mlp_in.l``     [``blocks.l.ln2.hook_normalized``]: the MLP module's input, after
  its pre-norm (Llama ``post_attention_layernorm``, Gemma ``pre_feedforward_layernorm``;
  ``resid_mid`` itself on OLMo-2), where transcoders read.
* ``mlp_out.l``    [``blocks.l.hook_mlp_out``]:    what the MLP sublayer adds (on a
  mixture-of-experts block, Mixtral and Qwen2/3-MoE, the sparse-MoE module's output: the
  routed experts' weighted sum, plus Qwen2-MoE's gated shared expert).
* ``resid_post.l`` [``blocks.l.hook_resid_post``]: output of block ``l``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import UnsupportedArchitectureError, choices


@dataclass(frozen=True)
class ArchSpec:
    """Where one architecture keeps its parts. Paths are dotted attribute paths."""

    family: str
    """Short family name, e.g. ``"llama"``."""
    layers: str
    """ModuleList of decoder blocks, from the causal-LM root."""
    final_norm: str
    """Final norm applied before the unembedding, from the root."""
    embed: str
    """Token embedding, from the root."""
    unembed: str
    """Unembedding (LM head), from the root."""
    attn_out: str
    """Submodule of a block whose output is ``attn_out`` (first element if a tuple)."""
    mlp_out: str
    """Submodule of a block whose output is ``mlp_out``."""
    attn_input: str
    """Submodule of a block whose input is ``resid_pre`` as the block body sees it
    (after any edits at ``resid_pre``)."""
    mlp_in: str = "mlp"
    """Submodule of a block whose (first positional) input is ``mlp_in``: the MLP itself."""
    parallel_residual: Callable[[object], bool] = lambda config: False
    """True when attention and MLP both read ``resid_pre`` (GPT-NeoX default), so
    there is no ``resid_mid`` between them."""
    softcap_attr: str | None = None
    """Config attribute holding the final-logit soft-cap, if the family has one."""


def _llama_like(family: str) -> ArchSpec:
    return ArchSpec(
        family=family,
        layers="model.layers",
        final_norm="model.norm",
        embed="model.embed_tokens",
        unembed="lm_head",
        attn_out="self_attn",
        mlp_out="mlp",
        attn_input="input_layernorm",
    )


def _gemma_like(family: str) -> ArchSpec:
    # Gemma 2/3 wrap each sublayer in a pre- and a post-norm; what reaches the
    # residual stream is the post-norm's output.
    return ArchSpec(
        family=family,
        layers="model.layers",
        final_norm="model.norm",
        embed="model.embed_tokens",
        unembed="lm_head",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        attn_input="input_layernorm",
        softcap_attr="final_logit_softcapping",
    )


ARCHITECTURES: dict[str, ArchSpec] = {
    "gemma3_text": _gemma_like("gemma3"),
    "gemma2": _gemma_like("gemma2"),
    # Gemma 1 is laid out like Llama (one norm before each sublayer, no soft-cap); its
    # sqrt(d_model) embedding scale lives inside embed_tokens, so resid_pre.0 has it.
    "gemma": _llama_like("gemma"),
    "llama": _llama_like("llama"),
    "mistral": _llama_like("mistral"),
    # Mixture-of-experts blocks keep Llama's layout; ``mlp`` is the sparse-MoE module
    # (its router runs inside it and its output is one tensor, not a tuple).
    "mixtral": _llama_like("mixtral"),
    "qwen2_moe": _llama_like("qwen2_moe"),
    "qwen3_moe": _llama_like("qwen3_moe"),
    "qwen2": _llama_like("qwen2"),
    "qwen3": _llama_like("qwen3"),
    "phi3": _llama_like("phi3"),
    "olmo2": ArchSpec(
        family="olmo2",
        layers="model.layers",
        final_norm="model.norm",
        embed="model.embed_tokens",
        unembed="lm_head",
        attn_out="post_attention_layernorm",
        mlp_out="post_feedforward_layernorm",
        # OLMo-2 norms after each sublayer, not before: attention reads resid_pre.
        attn_input="self_attn",
    ),
    "gpt2": ArchSpec(
        family="gpt2",
        layers="transformer.h",
        final_norm="transformer.ln_f",
        embed="transformer.wte",
        unembed="lm_head",
        attn_out="attn",
        mlp_out="mlp",
        attn_input="ln_1",
    ),
    "gpt_neox": ArchSpec(
        family="gpt_neox",
        layers="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        embed="gpt_neox.embed_in",
        unembed="lm_head|embed_out",  # early transformers 5 releases (5.0) name it embed_out
        attn_out="attention",
        mlp_out="mlp",
        attn_input="input_layernorm",
        parallel_residual=lambda config: bool(getattr(config, "use_parallel_residual", False)),
    ),
}
"""Supported architectures, keyed by Hugging Face ``config.model_type``."""


def supported_model_types() -> list[str]:
    """The ``config.model_type`` values interlayer supports."""
    return sorted(ARCHITECTURES)


def arch_spec(model: nn.Module) -> ArchSpec:
    """Return the :class:`ArchSpec` of a Hugging Face causal LM.

    Raises :class:`UnsupportedArchitectureError` naming the model's class and the
    supported ones.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture: {type(model).__name__} (model_type={model_type!r}); "
            f"supported model types: {choices(supported_model_types())}"
        )
    return ARCHITECTURES[model_type]


def unwrap_module(module: nn.Module) -> nn.Module:
    """The original Hugging Face module behind a wrapper.

    TransformerLens's ``TransformerBridge`` swaps a model's modules in place for
    bridge components that keep the original as ``_original_component``. A block
    bridge calls its original block, so block hooks go on the original; but some
    sublayer bridges (attention) reimplement the forward pass instead of calling
    the original, so sublayer hooks go on whatever the block actually calls.
    """
    while "_original_component" in getattr(module, "_modules", {}):
        module = module._modules["_original_component"]
    return module


def get_submodule(root: nn.Module, path: str, *, unwrap: bool = True) -> nn.Module:
    """Follow a dotted attribute path from ``root``, through wrappers when ``unwrap``
    (for modules interlayer calls itself); errors name the missing part."""
    if "|" in path:  # alternatives, for a module that transformers renamed between versions
        options = path.split("|")
        for option in options[:-1]:
            try:
                return get_submodule(root, option, unwrap=unwrap)
            except UnsupportedArchitectureError:
                continue
        return get_submodule(root, options[-1], unwrap=unwrap)
    module = unwrap_module(root)
    for part in path.split("."):
        if not hasattr(module, part):
            raise UnsupportedArchitectureError(
                f"{type(root).__name__} has no submodule {path!r} (missing {part!r}); "
                "its layout differs from the registered architecture"
            )
        module = getattr(module, part)
        if unwrap:
            module = unwrap_module(module)
    return module


def get_blocks(root: nn.Module, spec: ArchSpec) -> nn.ModuleList:
    """The decoder blocks, unwrapped (the model's own ModuleList when unwrapped already)."""
    layers = get_submodule(root, spec.layers)
    if all(unwrap_module(block) is block for block in layers):
        return layers  # type: ignore[return-value]
    return nn.ModuleList([unwrap_module(block) for block in layers])


def final_logit_softcap(model: nn.Module, spec: ArchSpec) -> float | None:
    """The final-logit soft-cap ``c`` (logits -> c * tanh(logits / c)), or None."""
    if spec.softcap_attr is None:
        return None
    value = getattr(model.config, spec.softcap_attr, None)
    return float(value) if value else None
