"""Loading a Hugging Face checkpoint with transformers: :func:`from_pretrained` (config,
placement and dtype checked before any weight is read, then model and tokenizer) and
:func:`quiet_transformers`. :func:`interlayer.load_model` chooses what to load."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from . import placement
from .adapter import ModelAdapter
from .architectures import ARCHITECTURES
from ..errors import InterlayerError, UnsupportedArchitectureError, choices

log = logging.getLogger("interlayer.model.loading")


@contextlib.contextmanager
def quiet_transformers(verbose: bool = False) -> Any:
    """Hide transformers' per-load progress bars unless logging is at INFO."""
    from transformers.utils import logging as hf_logging

    if verbose or log.isEnabledFor(logging.INFO):
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def from_pretrained(source: str, name: str, device: torch.device, dtype: str | torch.dtype, trust_remote_code: bool,
                    local_only: bool, **extra: Any) -> ModelAdapter:
    """A checkpoint loaded by transformers; ``extra`` holds the set ones of
    :data:`~interlayer.model.placement.HF_KEYWORDS`, passed on to ``from_pretrained``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    revision = extra.pop("revision", None)  # for the config and tokenizer too
    where = {"trust_remote_code": trust_remote_code, "local_files_only": local_only,
             **({"revision": revision} if revision is not None else {})}
    config = AutoConfig.from_pretrained(source, **where)
    if config.model_type not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture: {', '.join(getattr(config, 'architectures', None) or [config.model_type])} "
            f"(model_type={config.model_type!r}); supported model types: {choices(sorted(ARCHITECTURES))}"
        )
    device_map = extra.get("device_map")
    on_gpu = placement.targets_gpu(device, device_map, torch.cuda.is_available())
    dtype = placement.resolve_dtype(dtype, config, on_gpu)
    placement.warn_slow_dtype(dtype, on_gpu)
    placement.check_placement(config, extra, dtype, trust_remote_code)
    # attn_implementation=None lets transformers pick its default (sdpa where supported).
    with quiet_transformers():
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, use_safetensors=True, **where, **extra)
        except (ImportError, RuntimeError, ValueError) as err:
            if extra.get("quantization_config") is None or isinstance(err, OSError):
                raise
            raise InterlayerError(f"cannot load {name!r} quantised: {placement._first_line(err)}") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **where)
    except (OSError, ValueError) as err:
        if not Path(source).is_dir():
            raise
        # A checkpoint without tokenizer files still serves token-id inputs.
        log.warning("%s has no usable tokenizer (%s); text inputs will be refused", source, str(err).splitlines()[0])
        tokenizer = None
    if device_map is None and extra.get("quantization_config") is None:
        model.to(device)  # a placed or quantised model stays where transformers put it
    model.eval()
    return ModelAdapter(model, tokenizer, name=name)
