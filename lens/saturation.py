"""Layer saturation and early exit.

On a text sample, for every layer: the fraction of tokens whose lens top-1 already
equals the final layer's top-1, and the fraction whose lens top-1 is the true next
token. Each token's *exit layer* is the first layer from which its top-1 stays equal
to the final one through the last layer. Optionally the same pass also gives each
layer's entropy and KL(final || layer) per token, the logit-lens curves of a text sample.
(One seed paper reports that 54.4% of
tokens are already predicted correctly at the first layer of a 16-layer code model.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interlayer.model.adapter import ModelAdapter
from interlayer.store.collect import collect
from interlayer.decoding import LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError
from interlayer.intervals import proportion_interval
from interlayer.options import CONTEXT_LENGTH
from interlayer.results import Result, decode_array, encode_array, require
from interlayer.plot_text import plot_text

from .tuning import stacked_resid


@dataclass
class SaturationResult(Result):
    """Per-layer agreement with the final top-1 and with the true next token."""

    model: str
    lens: str
    layers: list[int]
    top1: torch.Tensor
    """``[layers, tokens]`` top-1 token id of every layer."""
    next_token: torch.Tensor
    """``[tokens]`` the true next token (-1 where the context ends)."""
    exit_layer: torch.Tensor
    """``[tokens]`` first layer from which top-1 stays equal to the final top-1."""
    entropy: torch.Tensor | None = field(default=None)
    """``[layers, tokens]`` entropy of each layer's distribution in nats (``None`` unless asked for)."""
    kl_to_final: torch.Tensor | None = field(default=None)
    """``[layers, tokens]`` KL(final || layer) in nats (``None`` unless asked for)."""

    @property
    def n_tokens(self) -> int:
        """The number of token positions analysed (columns of ``top1``)."""
        return int(self.top1.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """Per layer: ``match_final``, ``match_next`` (over tokens with a next token) and
        ``exit_fraction``, each with its 95% Wilson interval over tokens (``*_low``, ``*_high``)."""
        final = self.top1[-1]
        has_next = self.next_token >= 0
        n_next = int(has_next.sum())
        counts = torch.bincount(self.exit_layer, minlength=len(self.layers))
        frame = pd.DataFrame({
            "layer": self.layers,
            "match_final": (self.top1 == final).float().mean(1).numpy(),
            "match_next": (self.top1[:, has_next] == self.next_token[has_next]).float().mean(1).numpy(),
            "exit_fraction": (counts.float() / self.n_tokens).numpy(),
        })
        hits = {"match_final": ((self.top1 == final).sum(1).tolist(), self.n_tokens),
                "match_next": ((self.top1[:, has_next] == self.next_token[has_next]).sum(1).tolist(), n_next),
                "exit_fraction": (counts.tolist(), self.n_tokens)}
        for name, (successes, n) in hits.items():
            bounds = [proportion_interval(int(k), n) for k in successes]
            frame[f"{name}_low"] = [b[0] for b in bounds]
            frame[f"{name}_high"] = [b[1] for b in bounds]
        return frame

    def to_json(self) -> dict[str, Any]:
        """The per-layer table (``by_layer``) and the per-token tensors it comes from
        (``entropy`` and ``kl_to_final`` only when they were decoded)."""
        payload = {"model": self.model, "lens": self.lens, "layers": self.layers, "n_tokens": self.n_tokens,
                   "by_layer": self.to_frame().to_dict(orient="list"), "top1": encode_array(self.top1),
                   "next_token": encode_array(self.next_token), "exit_layer": encode_array(self.exit_layer)}
        for name in ("entropy", "kl_to_final"):
            if getattr(self, name) is not None:
                payload[name] = encode_array(getattr(self, name))
        return payload

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SaturationResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "lens", "layers", "top1", "next_token", "exit_layer", what="SaturationResult")
        return cls(model=payload["model"], lens=payload["lens"], layers=[int(x) for x in payload["layers"]],
                   top1=decode_array(payload["top1"], "torch"), next_token=decode_array(payload["next_token"], "torch"),
                   exit_layer=decode_array(payload["exit_layer"], "torch"),
                   **{name: decode_array(payload[name], "torch") for name in ("entropy", "kl_to_final") if name in payload})

    def headline(self) -> dict[str, Any]:
        """Tokens, and the agreement at the first layer and halfway."""
        frame = self.to_frame()
        mid = len(self.layers) // 2
        return {"model": self.model, "lens": self.lens, "tokens": self.n_tokens, "layers": len(self.layers),
                f"match_final at layer {self.layers[0]}": float(frame.match_final[0]),
                f"match_final at layer {self.layers[mid]}": float(frame.match_final[mid]),
                f"match_next at layer {self.layers[-1]}": float(frame.match_next.iloc[-1])}

    def exit_histogram(self) -> pd.DataFrame:
        """Number of tokens exiting at each layer."""
        counts = torch.bincount(self.exit_layer, minlength=len(self.layers))
        return pd.DataFrame({"exit_layer": self.layers, "tokens": counts.numpy()})

    def plot(self) -> go.Figure:
        """Top-1 agreement by layer with 95% Wilson intervals, and the exit-layer histogram."""
        frame = self.to_frame()
        fig = make_subplots(rows=1, cols=2, subplot_titles=("top-1 agreement by layer", "exit-layer histogram"))
        for key, name in (("match_final", "= final top-1"), ("match_next", "= true next token")):
            fig.add_trace(go.Scatter(x=frame.layer, y=frame[key], name=name, error_y={
                "type": "data", "symmetric": False, "array": frame[f"{key}_high"] - frame[key],
                "arrayminus": frame[key] - frame[f"{key}_low"]}), 1, 1)
        fig.add_trace(go.Bar(x=frame.layer, y=self.exit_histogram().tokens, name="tokens exiting"), 1, 2)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=plot_text(f"Saturation: {self.model}, {self.lens} lens, {self.n_tokens} tokens"))
        return fig


def exit_layers(top1: torch.Tensor) -> torch.Tensor:
    """For ``[layers, tokens]`` top-1 ids: the first layer from which every later
    layer's top-1 equals the last layer's."""
    agree = (top1 == top1[-1]).flip(0).long()  # from the last layer backwards
    # Count how many consecutive layers, from the last, agree with the final top-1.
    run = agree.cumprod(0).sum(0)
    return top1.shape[0] - run


def saturation(model: ModelAdapter, data: Any, *, tokens: int = 4096, context_length: int = CONTEXT_LENGTH, lens: Lens = LOGIT_LENS,
               batch_size: int = 8, text_field: str = "text", entropy_and_kl: bool = False,
               progress: bool = True) -> SaturationResult:
    """Measure saturation on ``tokens`` tokens of ``data`` (any store input): one store pass
    (``resid_post`` of every layer, packed contexts of ``context_length``), decoded once.
    With ``entropy_and_kl`` the same decoding also fills :attr:`SaturationResult.entropy`
    and :attr:`SaturationResult.kl_to_final` (what the report's logit-lens curves show)."""
    if tokens < 1:
        raise InterlayerError(f"tokens must be at least 1, got {tokens}")
    acts = collect(model, data, "resid_post.*", context_length=context_length, tokens=tokens,
                   batch_size=batch_size, text_field=text_field, progress=progress)
    acts = acts.rows(torch.arange(min(tokens, len(acts))))
    hidden = stacked_resid(acts, model.n_layers)
    targets, has_next = acts.next_tokens()
    layers = list(range(model.n_layers))
    decoded = LayerDecoder(model, lens=lens).decode(hidden, top_k=1, layers=layers, progress=progress,
                                                    entropy=entropy_and_kl,
                                                    reference=hidden[-1] if entropy_and_kl else None)
    top1 = decoded.top_ids[..., 0]
    return SaturationResult(model.name, lens.name, layers, top1,
                            torch.where(has_next, targets, torch.full_like(targets, -1)), exit_layers(top1),
                            decoded.entropy, decoded.kl_to_final)
