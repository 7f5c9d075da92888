"""The options that name and load a model: :class:`ModelOptions`, the option group of
every command that loads one (``--model``, ``--device``, ``--dtype``,
``--trust-remote-code``, ``--attn-implementation``, ``--compile``, and the placement options
``--device-map``, ``--max-memory``, ``--offload-folder``, ``--revision``, ``--quantization``,
``--no-check-sites``). It sits with the
model, below the store, so that a method's config takes it without importing the store."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..io.dtypes import DTYPE_CHOICES, parse_dtype
from ..options import Options, option
from .body import ATTN_IMPLEMENTATIONS
from .loading import DEFAULT_MODEL
from .placement import QUANTIZATIONS, parse_device_map, parse_max_memory, quantization_for

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
                                     "model's own; bfloat16 or float16 halve the memory; auto: the checkpoint's own "
                                     "on a GPU, float32 on a CPU)", choices=("auto", *DTYPE_CHOICES))
    trust_remote_code: bool = option(False, "let transformers run code shipped with a checkpoint")
    attn_implementation: str | None = option(None, "attention implementation: eager, sdpa, flash_attention_2 or "
                                                   "flex_attention (default: transformers' own, sdpa where supported)",
                                             choices=ATTN_IMPLEMENTATIONS, group="model")
    compile: bool = option(False, "torch.compile each decoder block (the first passes compile it: slower to start, "
                                  "faster per batch on a GPU)", group="model")
    device_map: str | None = option(None, "place the blocks with accelerate: auto, or a JSON object or .json file "
                                          "{module: device} (a GPU index, cpu or disk); instead of --device",
                                    group="model", parse=parse_device_map)
    max_memory: str | None = option(None, "memory per device for the placement, e.g. 0=20GiB,cpu=60GiB (implies "
                                          "--device-map auto)", group="model", parse=parse_max_memory)
    offload_folder: str | None = option(None, "folder for the weights the device map puts on disk", group="model")
    revision: str | None = option(None, "hub revision of the checkpoint: a branch, tag or commit", group="model")
    quantization: str | None = option(None, "load quantised with bitsandbytes (needs the bitsandbytes package and "
                                            "usually a GPU); other schemes from Python (quantization_config=)",
                                      choices=QUANTIZATIONS, group="model")
    check_sites: bool = option(True, "check at load that each resid_post site equals the model's own hidden state "
                                     "(--no-check-sites skips it: about 0.1 s)", group="model")

    def load(self) -> "ModelAdapter":
        """Load the model these options name (see :func:`interlayer.load_model`)."""
        from .loading import load_model

        extra: dict[str, object] = {}  # passed only when set, so the call stays the plain one by default
        if self.attn_implementation is not None:
            extra["attn_implementation"] = self.attn_implementation
        if self.compile:
            extra["compile"] = True
        for name in ("device_map", "max_memory", "offload_folder", "revision"):
            if getattr(self, name) is not None:
                extra[name] = self.parsed(name)
        if not self.check_sites:
            extra["check_sites"] = False
        if self.quantization is not None:
            dtype = parse_dtype(self.dtype if self.dtype not in (None, "auto") else "bfloat16")
            extra["quantization_config"] = quantization_for(self.quantization, dtype)
        model = load_model(self.model, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code,
                           **extra)
        for loaded in LOADED:
            loaded()
        return model
