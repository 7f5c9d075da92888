"""Optimizer state as flat tensors, so a training checkpoint is one safetensors file
(no pickles) that restores Adam exactly. Used by the tuned-lens and SAE trainers."""

from __future__ import annotations

from typing import Any

import torch

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
