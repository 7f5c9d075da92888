"""What interlayer's own steering does to the last-position logits, the quantity the peer
tests compare with what llama.cpp and repeng do with an exported vector."""

from __future__ import annotations

import numpy as np
import torch

from interlayer.steering import SteeringVector, steer


def steered_logit_deltas(model, direction: torch.Tensor, layer: int, ids: list[list[int]]) -> np.ndarray:
    """``[len(ids), vocab]``: the last-position logits of each prompt steered by ``direction``
    at ``resid_post.{layer}`` (coefficient 1) minus the unsteered ones, in float64."""
    vector = SteeringVector({layer: direction})
    rows = []
    for row in ids:
        x = torch.tensor([row])
        with torch.no_grad():
            base = model.model(input_ids=x).logits[0, -1]
            with steer(model, vector, 1.0):
                rows.append((model.model(input_ids=x).logits[0, -1] - base).double().numpy())
    return np.stack(rows)
