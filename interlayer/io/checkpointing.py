"""Optimizer state as flat tensors, so a training checkpoint is one safetensors file
(no pickles) that restores Adam exactly. Used by the tuned-lens and SAE trainers, which
also share the check that a checkpoint belongs to the run resuming it (:func:`check_resume_identity`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from interlayer.errors import InterlayerError

PREFIX = "adam."


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """``({"adam.<param>.<slot>": tensor}, param_groups)`` of an optimizer's state dict."""
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{PREFIX}{index}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   param_groups: list[dict[str, Any]]) -> None:
    """Restore what :func:`optimizer_tensors` flattened (other keys of ``tensors`` are ignored)."""
    state: dict[str, Any] = {"state": {}, "param_groups": param_groups}
    for key, value in tensors.items():
        if key.startswith(PREFIX):
            index, name = key[len(PREFIX):].split(".", 1)
            state["state"].setdefault(int(index), {})[name] = value
    optimizer.load_state_dict(state)


class CheckpointMismatchError(InterlayerError):
    """A checkpoint was written by another run (other options, data or model) and cannot be resumed."""


def identity_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key.sub: <saved> in the checkpoint, <current> now"`` for each leaf that differs
    between two nested identities (a key missing on one side reads as ``None``)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            out += identity_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} in the checkpoint, {new!r} now")
    return out


def check_resume_identity(saved: Mapping[str, Any], current: Mapping[str, Any], *, what: str,
                          path: str | Path) -> None:
    """Refuse to resume ``what`` (e.g. ``"SAE training run"``) from the checkpoint at ``path``
    when its saved identity differs from the current one: raises
    :class:`CheckpointMismatchError` naming each differing key with both values."""
    diffs = identity_differences(saved, current)
    if diffs:
        raise CheckpointMismatchError(
            f"{path} was written by a {what} with other options and cannot be resumed: {'; '.join(diffs[:6])}"
            f"{' ...' if len(diffs) > 6 else ''}. Use another --out directory, or the same options.")
