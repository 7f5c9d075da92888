"""Dtype names: the one table that turns ``"bf16"`` and friends into torch dtypes, for
model weights and stored activations alike."""

from __future__ import annotations

import torch

from ..errors import InterlayerError, choices

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
"""Accepted names (long and short) of the float dtypes interlayer stores and runs in."""

DTYPE_CHOICES: tuple[str, ...] = ("float32", "bfloat16", "float16")
"""The canonical names, as the CLI offers them."""


def parse_dtype(name: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """``name`` (or a torch dtype) as a torch dtype; an error names the valid choices."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise InterlayerError(f"{what} {name} is not supported; valid choices: {choices(DTYPE_CHOICES)}")
        return name
    if name not in DTYPES:
        raise InterlayerError(f"unknown {what} {name!r}; valid choices: {choices(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
