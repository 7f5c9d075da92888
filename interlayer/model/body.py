"""The model body as the adapter runs it: early stop by truncation, the opt-in
``torch.compile`` of the decoder blocks, and the attention implementations.

**Early stop.** A pass that needs blocks ``0..L`` only runs the model with its layer
list swapped for ``layers[:L+1]``, its final norm for an identity (for ``L < n_layers``)
and its unembedding for a stub that returns a ``[batch, seq, 0]`` tensor, all restored
afterwards. Every supported family's decoder loops over its layer list (with
``enumerate``, so ``config.layer_types[i]`` still names block ``i``), so the blocks that
run see exactly the inputs of a full pass: the activations are the same, bit for bit.
The modules that do not run keep their hooks, which do not fire (as on the old path,
which raised an exception from a hook after block ``L``). Where the model's layout is
not the registered one (no plain ``nn.ModuleList`` at the layers path), the pass falls
back to that exception.

**Compile.** :func:`compile_blocks` compiles each block's ``forward`` (regional
compilation), not its ``__call__``: the hooks at ``resid_pre`` and ``resid_post`` (a
block's pre- and post-hooks) and :meth:`~ModelAdapter.record_outputs` run in eager mode
around the compiled region, and :meth:`~ModelAdapter.resume_after` still replaces a
block's ``forward``. Hooks at ``attn_out``, ``mlp_out`` and ``resid_mid`` sit on
submodules inside the block, where Dynamo does not guard on them (a hook attached after
the block compiled would be skipped): while a submodule of a block has a hook, that
block runs eagerly (the others stay compiled). Sizes: ``dynamic=None`` compiles each
block for the first shape and once more, with dynamic batch and sequence sizes, at the
first other shape (two graphs per distinct block code path, e.g. Gemma 3's sliding and
full attention layers share one); later shapes reuse them.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..errors import InterlayerError, UnsupportedArchitectureError, choices
from .architectures import ArchSpec, get_submodule

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flex_attention")
"""Attention implementations ``load_model(attn_implementation=...)`` accepts (``None``:
transformers' default, ``sdpa`` where the model supports it)."""

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
"""``torch.compile`` modes :meth:`ModelAdapter.compile` accepts. The CUDA-graph modes
(``reduce-overhead``, ``max-autotune``) are refused: a CUDA graph writes every replay's
outputs into the same buffers, so an activation read at ``resid_post`` on one pass would
be overwritten by the next."""


class _NoHead(nn.Module):
    """Stands in for the unembedding of a pass that stops early: ``[..., 0]`` logits."""

    def forward(self, hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden[..., :0]


def _slot(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding the last part of ``path`` (alternatives ``a|b``: the first
    present) and that part's name, so that the slot can be swapped."""
    options = path.split("|")
    for option in options:
        parent_path, _, name = option.rpartition(".")
        parent = get_submodule(root, parent_path, unwrap=False) if parent_path else root
        if name in parent._modules:
            return parent, name
    raise UnsupportedArchitectureError(f"{type(root).__name__} has no submodule {path!r}")


def truncation_slots(model: nn.Module, spec: ArchSpec) -> dict[str, tuple[nn.Module, str]] | None:
    """The ``layers``, ``final_norm`` and ``unembed`` slots of ``model``, or ``None`` where
    its layout does not allow truncation (then early stops raise from a hook instead)."""
    try:
        slots = {part: _slot(model, getattr(spec, part)) for part in ("layers", "final_norm", "unembed")}
    except UnsupportedArchitectureError:
        return None
    parent, name = slots["layers"]
    return slots if isinstance(parent._modules[name], nn.ModuleList) else None


@contextlib.contextmanager
def truncated(slots: dict[str, tuple[nn.Module, str]], layer: int, n_layers: int) -> Iterator[None]:
    """Within the block, the model runs blocks ``0..layer`` only (and the final norm when
    ``layer == n_layers``); its logits are ``[batch, seq, 0]``. Restored on exit."""
    swaps: dict[str, nn.Module] = {"unembed": _NoHead()}
    parent, name = slots["layers"]
    if layer < n_layers:
        swaps["layers"] = nn.ModuleList(list(parent._modules[name])[: layer + 1])
        swaps["final_norm"] = nn.Identity()
    saved = {part: slots[part][0]._modules[slots[part][1]] for part in swaps}
    try:
        for part, module in swaps.items():
            slots[part][0]._modules[slots[part][1]] = module
        yield
    finally:
        for part, module in saved.items():
            slots[part][0]._modules[slots[part][1]] = module


def check_attn_implementation(name: str | None) -> str | None:
    """Validate an attention implementation name before anything is loaded."""
    if name is None:
        return None
    if name not in ATTN_IMPLEMENTATIONS:
        raise InterlayerError(f"unknown attn_implementation {name!r}; valid choices: {choices(ATTN_IMPLEMENTATIONS)} "
                              "(or None for transformers' default)")
    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise InterlayerError("attn_implementation 'flash_attention_2' needs the flash-attn package (CUDA only), "
                              f"which is not installed; other choices: {choices(ATTN_IMPLEMENTATIONS)}")
    return name


def set_attn_implementation(model: nn.Module, name: str) -> None:
    """Switch a loaded model's attention implementation in place (transformers'
    ``set_attn_implementation``, which checks that the model supports it)."""
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise InterlayerError(f"{type(model).__name__} has no set_attn_implementation; load it with "
                              f"attn_implementation={name!r} yourself, or pass a checkpoint instead")
    try:
        setter(name)
    except (ValueError, ImportError) as err:
        raise InterlayerError(f"{type(model).__name__} cannot use attn_implementation={name!r}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from err


def compile_blocks(blocks: nn.ModuleList, mode: str | None, dynamic: bool | None) -> dict[nn.Module, Any]:
    """Replace each block's ``forward`` with its ``torch.compile`` (``mode``, ``dynamic`` as
    in torch), run eagerly while a submodule of the block has a forward hook; returns
    what each block's instance ``forward`` was (``None``: the class's), for
    :func:`uncompile_blocks`."""
    if mode is not None and mode not in COMPILE_MODES:
        raise InterlayerError(f"unknown compile mode {mode!r}; valid choices: {choices(COMPILE_MODES)} (or None for "
                              "torch's default); the CUDA-graph modes reuse their output buffers across passes, "
                              "which would overwrite activations already read")
    saved: dict[nn.Module, Any] = {}
    for block in blocks:
        saved[block] = block.__dict__.get("forward")
        eager = block.forward
        block.forward = _unless_hooked(block, eager, torch.compile(eager, mode=mode, dynamic=dynamic))
    return saved


def _unless_hooked(block: nn.Module, eager: Any, compiled: Any) -> Any:
    # Dynamo does not guard on the hooks of the submodules it inlines: a hook attached
    # after a block compiled would be skipped, and one traced in would keep running after
    # its removal. So a block whose submodules have hooks (attn_out, mlp_out, resid_mid)
    # runs eagerly, and the compiled code never sees a hook.
    inner = [module for module in block.modules() if module is not block]

    def forward(*args: Any, **kwargs: Any) -> Any:
        if any(module._forward_hooks or module._forward_pre_hooks for module in inner):
            return eager(*args, **kwargs)
        return compiled(*args, **kwargs)

    return forward


def uncompile_blocks(saved: dict[nn.Module, Any]) -> None:
    """Undo :func:`compile_blocks`: each block's ``forward`` is what it was before."""
    for block, old in saved.items():
        if old is None:
            block.__dict__.pop("forward", None)
        else:
            block.forward = old
