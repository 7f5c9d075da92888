"""Hook-site identity at load: the adapter's sites are the model's own hidden states.

:func:`check_site_identity` runs one forward pass of a few tokens with Hugging Face's
``output_hidden_states=True`` and the adapter's readers at ``resid_pre.0``, every
``resid_post.l`` and ``ln_final`` attached, and checks

* ``resid_pre.0 == hidden_states[0]`` (the embedding as the first block reads it);
* ``resid_post.l == hidden_states[l + 1]`` for every ``l < L - 1``;
* ``hidden_states[L]`` equals ``ln_final`` (``last_hidden_state="post_norm"``, what
  every family transformers 5 ships records) or ``resid_post.{L-1}``
  (``"pre_norm"``, as some older remote-code checkpoints record it).

Both sides come from the same pass, so on a correct registration they agree bit for
bit; a wrong entry in :mod:`interlayer.model.architectures` (a hook on the wrong
module, a renamed submodule the adapter still finds) differs by the size of an
activation. The check costs one forward of ``tokens`` tokens without the unembedding
(measured on a shared 2-core CPU, float32: 0.12 s, 3% of the 4.6 s ``load_model`` of the
embedded Gemma 3 270M; 0.10 s, 12% of SmolLM2-135M's 0.9 s; 3 ms on a tiny test
checkpoint). That first pass also warms up what any first pass would.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..errors import InterlayerError

__all__ = ["SiteIdentity", "SiteIdentityError", "check_site_identity", "LAST_HIDDEN_STATES"]

LAST_HIDDEN_STATES = ("post_norm", "pre_norm")
"""What a checkpoint's final ``hidden_states`` entry can be: after the final norm
(``ln_final``) or before it (``resid_post.{L-1}``)."""

_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
"""Relative tolerance (to the reference's largest magnitude) per dtype; 1e-2 otherwise
(bfloat16, float16). The two sides are the same tensors on a correct registration."""


class SiteIdentityError(InterlayerError):
    """An adapter site that is not the model's own hidden state (a wrong architecture entry)."""


@dataclass(frozen=True)
class SiteIdentity:
    """What :func:`check_site_identity` found.

    Attributes:
        model_type: the checked model's ``config.model_type``.
        n_layers: its number of decoder blocks.
        tokens: the number of tokens of the check's forward pass.
        last_hidden_state: ``"post_norm"`` when the model's final ``hidden_states`` entry
            is ``ln_final``, ``"pre_norm"`` when it is ``resid_post.{L-1}``.
        max_diff: the largest absolute difference per checked site (``resid_pre.0``,
            ``resid_post.l``, and for the last entry the site it matched).
        seconds: wall time of the check.
    """

    model_type: str
    n_layers: int
    tokens: int
    last_hidden_state: Literal["post_norm", "pre_norm"]
    max_diff: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _probe_ids(adapter: Any, tokens: int) -> torch.Tensor:
    """``tokens`` ids spread over the vocabulary (BOS first where the model has one)."""
    vocab = adapter.vocab_size
    ids = torch.linspace(3, vocab - 1, tokens).long().clamp(0, vocab - 1)
    if adapter.bos_token_id is not None and adapter.bos_token_id < vocab:
        ids[0] = adapter.bos_token_id
    return ids.unsqueeze(0).to(adapter.device)  # where the embedding runs (also when placed by accelerate)


def _diff(ours: torch.Tensor, theirs: torch.Tensor) -> tuple[float, float]:
    """``(max |ours - theirs|, tolerance)``; an infinite difference where shapes differ."""
    if ours.shape != theirs.shape:
        return float("inf"), 0.0
    theirs = theirs.to(ours.device)
    diff = (ours.double() - theirs.double()).abs().max().item()
    scale = max(1.0, theirs.double().abs().max().item())
    return diff, _TOLERANCE.get(ours.dtype, 1e-2) * scale


_CAPTURE_FLAG = "_output_capturing_hooks_installed"
"""The attribute transformers 5 sets on a model once it has installed its (inactive
between passes) hidden-state capture hooks on the blocks and attention modules."""


@contextlib.contextmanager
def _as_found(model: nn.Module) -> Iterator[None]:
    """Leave ``model`` with the hooks it had: the first ``output_hidden_states`` pass makes
    transformers install capture hooks for good, and a hook inside a block keeps
    :meth:`~interlayer.model.adapter.ModelAdapter.compile`'s blocks eager. Hooks added
    during the pass are removed, and the flag reset so that transformers reinstalls them
    when a later pass asks for hidden states; where no such flag was set (another
    transformers), they stay, which costs speed, never a value."""
    modules = list(model.modules())
    hooks_before = [(set(m._forward_hooks), set(m._forward_pre_hooks)) for m in modules]
    flags_before = [getattr(m, _CAPTURE_FLAG, False) for m in modules]
    try:
        yield
    finally:
        flipped = [m for m, was in zip(modules, flags_before) if not was and getattr(m, _CAPTURE_FLAG, False)]
        if flipped:
            for module, (forward, pre) in zip(modules, hooks_before):
                for key in set(module._forward_hooks) - forward:
                    for table in (module._forward_hooks, module._forward_hooks_with_kwargs,
                                  module._forward_hooks_always_called):
                        table.pop(key, None)
                for key in set(module._forward_pre_hooks) - pre:
                    module._forward_pre_hooks.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            for module in flipped:
                setattr(module, _CAPTURE_FLAG, False)


def _capture(adapter: Any, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """One pass: the adapter's reads and the model's own ``hidden_states``."""
    sites = ["resid_pre.0", *(f"resid_post.{layer}" for layer in range(adapter.n_layers)), "ln_final"]
    seen: dict[str, torch.Tensor] = {}

    def reader(name: str):
        return lambda x: seen.__setitem__(name, x.detach())

    # the head is skipped: hidden_states need no logits, and the unembedding is the largest matmul
    readers = {site: reader(site) for site in sites}
    with torch.no_grad(), _as_found(adapter.model), adapter.skip_head(), adapter.hooks(readers):
        out = adapter.model(input_ids=ids, output_hidden_states=True, use_cache=False)
    hidden = getattr(out, "hidden_states", None)
    if hidden is None or len(hidden) != adapter.n_layers + 1 or set(seen) != set(sites):
        got = "no hidden_states" if hidden is None else f"{len(hidden)} hidden_states"
        raise SiteIdentityError(
            f"{type(adapter.model).__name__} returned {got} and fired {len(seen)} of {len(sites)} site hooks; "
            f"expected {adapter.n_layers + 1} hidden_states (embedding + one per block); "
            "pass load_model(..., check_sites=False) or --no-check-sites to skip this check"
        )
    return seen, tuple(hidden)


def _mismatch(adapter: Any, site: str, entry: str, diff: float, tol: float) -> SiteIdentityError:
    return SiteIdentityError(
        f"{adapter.model_type}: site {site} differs from the model's {entry} by up to {diff:.3g} "
        f"(tolerance {tol:.3g}); its entry in interlayer.model.architectures does not fit this model "
        "(pass load_model(..., check_sites=False) or --no-check-sites to load it unchecked)"
    )


def check_site_identity(adapter: Any, tokens: int = 4) -> SiteIdentity:
    """Check the adapter's residual sites against the model's own hidden states.

    One forward pass of ``tokens`` tokens with ``output_hidden_states=True``:
    ``resid_pre.0 = hidden_states[0]``, ``resid_post.l = hidden_states[l + 1]`` for
    ``l < L - 1``, and ``hidden_states[L]`` is ``ln_final`` (post-norm) or
    ``resid_post.{L-1}`` (pre-norm), which is recorded.

    Args:
        adapter: the :class:`~interlayer.model.adapter.ModelAdapter` to check.
        tokens: the length of the probe sequence (at least 2).

    Returns:
        A :class:`SiteIdentity` naming the final entry's kind and the differences.

    Raises:
        SiteIdentityError: a site differs from its hidden state beyond the dtype's
            tolerance (the message names the site and the largest difference), or the
            model returns no ``hidden_states``.
    """
    if tokens < 2:
        raise SiteIdentityError(f"tokens={tokens!r} is too short; use at least 2 tokens")
    start = time.perf_counter()
    seen, hidden = _capture(adapter, _probe_ids(adapter, tokens))
    last = adapter.n_layers - 1
    max_diff: dict[str, float] = {}
    pairs = [("resid_pre.0", 0), *((f"resid_post.{layer}", layer + 1) for layer in range(last))]
    for site, index in pairs:
        diff, tol = _diff(seen[site], hidden[index])
        if not diff <= tol:
            raise _mismatch(adapter, site, f"hidden_states[{index}]", diff, tol)
        max_diff[site] = diff
    post, post_tol = _diff(seen["ln_final"], hidden[-1])
    pre, pre_tol = _diff(seen[f"resid_post.{last}"], hidden[-1])
    if post <= post_tol:
        kind, max_diff["ln_final"] = "post_norm", post
    elif pre <= pre_tol:
        kind, max_diff[f"resid_post.{last}"] = "pre_norm", pre
    else:
        site, diff, tol = ("ln_final", post, post_tol) if post <= pre else (f"resid_post.{last}", pre, pre_tol)
        raise _mismatch(adapter, site, f"hidden_states[{last + 1}] (neither ln_final nor resid_post.{last})", diff, tol)
    return SiteIdentity(adapter.model_type, adapter.n_layers, tokens, kind, max_diff, time.perf_counter() - start)
