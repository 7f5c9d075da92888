"""The options that name and load a model: :class:`ModelOptions`, the option group of
every command that loads one (``--model``, ``--device``, ``--dtype``,
``--trust-remote-code``, ``--attn-implementation``, ``--compile``). It sits with the
model, below the store, so that a method's config takes it without importing the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..io.dtypes import DTYPE_CHOICES
from ..options import Options, option
from .body import ATTN_IMPLEMENTATIONS
from .loading import DEFAULT_MODEL

if TYPE_CHECKING:
    from .adapter import ModelAdapter

__all__ = ["LOADED", "ModelOptions"]

LOADED: list[Callable[[], None]] = []
"""Called after every :meth:`ModelOptions.load` (the command line marks there that the
computation has started: an I/O error from then on is a failure of the run, not bad input)."""


@dataclass
class ModelOptions(Options):
    """Options every command that loads a model shares."""

    model: str = option(DEFAULT_MODEL, "embedded alias, checkpoint directory or hub id")
    device: str | None = option(None, "torch device (default: cuda if available, else cpu)")
    dtype: str | None = option(None, "weights dtype (default: float32 on every device, so decoded numbers match the "
                                     "model's own; bfloat16 or float16 halve the memory)", choices=DTYPE_CHOICES)
    trust_remote_code: bool = option(False, "let transformers run code shipped with a checkpoint")
    attn_implementation: str | None = option(None, "attention implementation: eager, sdpa, flash_attention_2 or "
                                                   "flex_attention (default: transformers' own, sdpa where supported)",
                                             choices=ATTN_IMPLEMENTATIONS, group="model")
    compile: bool = option(False, "torch.compile each decoder block (the first passes compile it: slower to start, "
                                  "faster per batch on a GPU)", group="model")

    def load(self) -> "ModelAdapter":
        """Load the model these options name (see :func:`interlayer.load_model`)."""
        from .loading import load_model

        extra: dict[str, object] = {}  # passed only when set, so the call stays the plain one by default
        if self.attn_implementation is not None:
            extra["attn_implementation"] = self.attn_implementation
        if self.compile:
            extra["compile"] = True
        model = load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                           **extra)
        for loaded in LOADED:
            loaded()
        return model
