"""Forward passes over the adapter's model: the pass every interlayer module uses, and
the context managers that stop it after a block, record block outputs, resume from a
recorded output (shared prefixes) and skip the model's own head, and the opt-in compile
of the blocks (:meth:`ForwardPasses.compile`).

:class:`ForwardPasses` is a base of :class:`~interlayer.model.adapter.ModelAdapter`;
it needs the adapter's ``model``, ``blocks``, ``spec``, ``unembed``, ``n_layers``,
``vocab_size``, ``device``, ``site``, ``check_layer`` and ``hooks``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .architectures import get_submodule
from .body import compile_blocks, truncated, truncation_slots, uncompile_blocks
from .sites import Site

SiteFn = Callable[[torch.Tensor], "torch.Tensor | None"]
"""A hook function: receives the site's activation ``[batch, seq, d_model]`` and
returns a replacement tensor (a write) or ``None`` (a read)."""


class _StopForward(Exception):
    """Raised inside a hook to end a forward pass after the deepest needed layer."""


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: itself when it is there already, else a copy (without
    blocking the host when it comes from pinned memory)."""
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=tensor.device.type == "cpu" and tensor.is_pinned())


def _first(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, tuple) else value


def _replace_first(value: Any, new: torch.Tensor) -> Any:
    if isinstance(value, tuple):
        return (new, *value[1:])
    return new


class ForwardPasses:
    """The forward passes of :class:`~interlayer.model.adapter.ModelAdapter`."""

    _real_unembed: Callable[[torch.Tensor], torch.Tensor] | None
    _eager_forwards: dict[nn.Module, Any] | None = None

    @property
    def compiled(self) -> bool:
        """Whether the decoder blocks run compiled (:meth:`compile`)."""
        return self._eager_forwards is not None

    def compile(self, mode: str | None = None, *, dynamic: bool | None = None) -> "ForwardPasses":
        """Compile each decoder block's ``forward`` with ``torch.compile`` (regional
        compilation); returns the adapter. Opt-in: passes are eager until this is called.

        The hooks at ``resid_pre``/``resid_post`` run eagerly around the compiled blocks; a
        block with a hook inside it (``attn_out``, ``mlp_out``, ``resid_mid``) runs eagerly
        while the hook is attached (see :mod:`interlayer.model.body`).
        The first pass of each block compiles it (seconds to minutes); ``dynamic=None``
        (torch's default) recompiles once, with dynamic sizes, when the batch or sequence
        size first changes; ``dynamic=True`` compiles dynamic at once. The values equal the
        eager ones to float tolerance, not bit for bit (fused kernels sum in another order).

        Args:
            mode: ``None``/``"default"`` or ``"max-autotune-no-cudagraphs"``; the CUDA-graph
                modes are refused (see :data:`interlayer.model.body.COMPILE_MODES`).
            dynamic: passed to ``torch.compile``.
        """
        self.uncompile()
        self._eager_forwards = compile_blocks(self.blocks, mode, dynamic)
        return self

    def uncompile(self) -> "ForwardPasses":
        """Undo :meth:`compile`: the blocks run eagerly again; returns the adapter."""
        if self._eager_forwards is not None:
            uncompile_blocks(self._eager_forwards)
            self._eager_forwards = None
        return self

    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        read: Iterable[str | Site] = (),
        edit: Mapping[str, SiteFn] | None = None,
        logits: bool = True,
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """One forward pass, returning ``(logits or None, {site: activation})``.

        With ``logits=False`` the pass stops after the deepest layer that any read or
        edit needs, and nothing is unembedded. Read activations are detached.
        """
        sites = [self.site(s) for s in read]
        edits = dict(edit or {})
        captured: dict[str, torch.Tensor] = {}

        def reader(name: str) -> SiteFn:
            def fn(x: torch.Tensor) -> None:
                captured[name] = x.detach()

            return fn

        fns: dict[str, list[SiteFn]] = {}
        for site, fn in edits.items():
            fns.setdefault(self.site(site).name, []).append(fn)
        for site in sites:
            fns.setdefault(site.name, []).append(reader(site.name))
        stop_layer = None
        if not logits:
            stop_layer = max([self.site(s).layer for s in fns] or [0])
        out = self.forward(input_ids, attention_mask, hooks=fns, stop_after_layer=stop_layer)
        return out, captured

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        hooks: Mapping[str, SiteFn | Sequence[SiteFn]] | None = None,
        stop_after_layer: int | None = None,
        resume: tuple[int, Any] | None = None,
    ) -> torch.Tensor | None:
        """The forward pass every interlayer module uses: no autograd, no KV cache,
        hook functions attached for its duration, logits returned unless it stops
        after ``stop_after_layer`` (then ``None``; nothing is unembedded).

        ``resume=(layer, output)`` skips blocks ``0..layer``: block ``layer`` passes on
        ``output``, which it returned on an earlier pass over the same inputs (see
        :meth:`record_outputs` and :meth:`resume_after`).

        With padding, position ids are counted over real tokens only
        (``cumsum(mask) - 1``), so left padding gives every architecture, absolute
        position embeddings included, the same positions as an unpadded pass.
        """
        kwargs = self._model_inputs(input_ids, attention_mask)
        with torch.no_grad(), self.hooks(hooks or {}), self.stop_after(stop_after_layer), self.resume_after(resume):
            try:
                out = self.model(**kwargs)
            except _StopForward:
                return None
        return None if stop_after_layer is not None else out.logits

    def _model_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> dict[str, Any]:
        """The model call's keyword arguments: ids and mask on the model's device (moved
        only when they are elsewhere; asynchronously from pinned memory), position ids."""
        device = self.device
        input_ids = _on(input_ids, device)
        kwargs: dict[str, Any] = {"input_ids": input_ids, "use_cache": False}
        if attention_mask is not None:
            attention_mask = _on(attention_mask, device)
            kwargs["attention_mask"] = attention_mask
            kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs

    @contextlib.contextmanager
    def stop_after(self, layer: int | None) -> Iterator[None]:
        """Within the block, forward passes end right after block ``layer`` (after the
        final norm for ``layer == n_layers``); ``None`` leaves passes untouched.

        The model runs only blocks ``0..layer`` (see :mod:`interlayer.model.body`): its
        layer list is truncated, its final norm (unless ``layer == n_layers``) and its
        unembedding are skipped, and its logits are ``[batch, seq, 0]``. Where the
        model's layout does not allow that (no plain ``nn.ModuleList`` at the layers
        path), the pass raises an internal exception after block ``layer`` instead,
        which :meth:`forward` catches.
        """
        if layer is None:
            yield
            return
        if layer != self.n_layers:
            self.check_layer(layer)
        slots = truncation_slots(self.model, self.spec)
        if slots is not None:
            with truncated(slots, layer, self.n_layers):
                yield
            return

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            raise _StopForward

        if layer == self.n_layers:  # after the final norm (ln_final), before the unembedding
            handle = get_submodule(self.model, self.spec.final_norm, unwrap=False).register_forward_hook(stop)
        else:
            handle = self.blocks[layer].register_forward_hook(stop)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def record_outputs(self, layers: Iterable[int]) -> Iterator[dict[int, Any]]:
        """Within the block, keep what each block in ``layers`` returned on the latest
        forward pass, as the block returned it (before any output hook edits it): the
        ``output`` that :meth:`resume_after` replays."""
        outputs: dict[int, Any] = {}
        handles = []

        def keeper(layer: int) -> Callable[..., None]:
            def keep(module: nn.Module, args: Any, output: Any) -> None:
                outputs[layer] = output

            return keep

        try:
            for layer in sorted(set(layers)):
                self.check_layer(layer)
                handles.append(self.blocks[layer].register_forward_hook(keeper(layer), prepend=True))
            yield outputs
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def resume_after(self, resume: tuple[int, Any] | None) -> Iterator[None]:
        """Within the block, forward passes skip blocks ``0..layer`` of ``resume = (layer, output)``:
        block ``layer`` returns ``output`` (a copy), what it returned on an earlier pass over
        the same inputs (:meth:`record_outputs`), and the pass goes on from block ``layer + 1``.

        Many interventions on one batch so share its clean prefix: the hooks at block
        ``layer``'s output (``resid_post.{layer}``) and after it run as in a full pass. Reads
        and writes at earlier sites must not be attached: their blocks do not run.
        ``None`` leaves passes untouched.
        """
        if resume is None:
            yield
            return
        layer, output = resume
        self.check_layer(layer)
        first = _first(output)

        def passed_on(*args: Any, **kwargs: Any) -> Any:  # skipped blocks: the next one ignores it
            return output

        def replay(*args: Any, **kwargs: Any) -> Any:
            return _replace_first(output, first.clone())  # hooks may edit in place; the record stays clean

        blocks = list(self.blocks[: layer + 1])
        saved = [block.__dict__.get("forward") for block in blocks]
        try:
            for block in blocks[:-1]:
                block.forward = passed_on
            blocks[-1].forward = replay
            yield
        finally:
            for block, old in zip(blocks, saved):
                if old is None:
                    block.__dict__.pop("forward", None)
                else:
                    block.forward = old

    @contextlib.contextmanager
    def skip_head(self) -> Iterator[None]:
        """Within the block, the model's own unembedding does not run: it returns zeros of
        its output's shape, so the logits the model reports are zeros. For a caller that
        decodes the final state itself in one head call with other rows (e.g. every layer
        a decoding step needs), which reads the unembedding once per step instead of twice;
        nothing may use the model's logits inside the block."""
        module = self.unembed
        saved = module.__dict__.get("forward")
        vocab = self.vocab_size

        def zeros(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return hidden.new_zeros(*hidden.shape[:-1], vocab)

        self._real_unembed = saved if saved is not None else type(module).forward.__get__(module)
        module.forward = zeros
        try:
            yield
        finally:
            self._real_unembed = None
            if saved is None:
                module.__dict__.pop("forward", None)
            else:
                module.forward = saved
