"""Where the tokens of the current forward call stand (generation steps included)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PositionTracker:
    """Where the tokens of the current forward call stand, for hooks that act on some
    positions only (e.g. steering only the generated tokens).

    A forward pre-hook on the model reads the call's ``position_ids`` (which Hugging Face
    generation and :meth:`ModelAdapter.forward` count over real tokens only), else its
    ``attention_mask`` (``cumsum(mask) - 1``), else counts from the cache length. So left
    and right padding give every row the same positions. A call with an empty (or no) KV
    cache is a prompt pass and sets ``prompt_lengths`` (real tokens per row).
    """

    def __init__(self, adapter: Any) -> None:
        """``adapter``: the :class:`~interlayer.model.adapter.ModelAdapter` whose model to watch."""
        self.positions: torch.Tensor | None = None
        """``[batch, seq]`` real-token position of each token of the current call."""
        self.prompt_lengths: torch.Tensor | None = None
        """``[batch]`` real tokens of each row's prompt (set by the prompt pass)."""
        self._handle = adapter.model.register_forward_pre_hook(self._see, with_kwargs=True)

    def _see(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        source = ids if ids is not None else kwargs["inputs_embeds"]
        b, s = int(source.shape[0]), int(source.shape[1])
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        past = int(cache.get_seq_length()) if hasattr(cache, "get_seq_length") else 0
        mask = kwargs.get("attention_mask")
        position_ids = kwargs.get("position_ids")
        if isinstance(position_ids, torch.Tensor):
            positions = position_ids.expand(b, s)
        elif isinstance(mask, torch.Tensor) and mask.dim() == 2:
            positions = (mask.long().cumsum(-1) - 1)[:, -s:].clamp(min=0)
        else:
            positions = (torch.arange(s, device=source.device) + past).expand(b, s)
        self.positions = positions
        if past == 0:
            if isinstance(mask, torch.Tensor) and mask.dim() == 2:
                self.prompt_lengths = mask.long().sum(-1)
            else:
                self.prompt_lengths = positions.max(-1).values + 1

    def remove(self) -> None:
        self._handle.remove()
