"""The logit lens (nostalgebraist 2020): decode the residual stream after every
layer through the model's own final norm and unembedding."""

from __future__ import annotations

import html
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import torch

from interlayer.adapter import ModelAdapter
from interlayer.decoding import DEFAULT_MEMORY_MB, LayerDecoder


@dataclass
class LogitLensResult:
    """Per-layer, per-position decoding of one prompt.

    ``top_ids``/``top_probs`` are ``[layers, positions, k]``; ``entropy`` and
    ``kl_to_final`` (KL(final || layer), nats) are ``[layers, positions]``.
    """

    model: str
    input_tokens: list[str]
    layers: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[list[str]]]
    entropy: torch.Tensor
    kl_to_final: torch.Tensor

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (layer, position, rank)."""
        rows = []
        for li, layer in enumerate(self.layers):
            for pos, input_token in enumerate(self.input_tokens):
                for rank in range(self.top_ids.shape[-1]):
                    rows.append({
                        "layer": layer, "position": pos, "input_token": input_token, "rank": rank,
                        "token": self.top_tokens[li][pos][rank], "token_id": int(self.top_ids[li, pos, rank]),
                        "prob": float(self.top_probs[li, pos, rank]), "entropy": float(self.entropy[li, pos]),
                        "kl_to_final": float(self.kl_to_final[li, pos]),
                    })
        return pd.DataFrame(rows)

    def table(self) -> pd.DataFrame:
        """Wide format: layers down, input positions across, the top-1 token in each cell."""
        columns = [f"{pos}:{tok}" for pos, tok in enumerate(self.input_tokens)]
        data = [[self.top_tokens[li][pos][0] for pos in range(len(self.input_tokens))] for li in range(len(self.layers))]
        return pd.DataFrame(data, index=pd.Index(self.layers, name="layer"), columns=columns)

    def plot(self) -> go.Figure:
        """Layer x position heatmap coloured by top-1 probability, the top token in each cell."""
        text = [[html.escape(self.top_tokens[li][pos][0]) for pos in range(len(self.input_tokens))]
                for li in range(len(self.layers))]
        hover = [[f"layer {layer}, pos {pos}<br>top: {html.escape(self.top_tokens[li][pos][0])!s}"
                  f" ({float(self.top_probs[li, pos, 0]):.3f})<br>entropy {float(self.entropy[li, pos]):.2f}"
                  f"<br>KL to final {float(self.kl_to_final[li, pos]):.2f}"
                  for pos in range(len(self.input_tokens))] for li, layer in enumerate(self.layers)]
        fig = go.Figure(go.Heatmap(
            z=self.top_probs[..., 0].numpy(), x=[f"{p}:{html.escape(t)}" for p, t in enumerate(self.input_tokens)],
            y=[str(layer) for layer in self.layers], text=text, texttemplate="%{text}", hovertext=hover,
            hoverinfo="text", colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "p(top-1)"},
        ))
        fig.update_layout(title=f"Logit lens: {html.escape(self.model)}", xaxis_title="input position",
                          yaxis_title="layer (resid_post)")
        return fig


def logit_lens(model: ModelAdapter, prompt: str, *, top_k: int = 1, memory_mb: float = DEFAULT_MEMORY_MB) -> LogitLensResult:
    """Decode ``resid_post`` of every layer at every position of ``prompt``.

    The last layer's row is the model's own prediction, and every row's
    KL is measured against it.
    """
    if not prompt:
        raise ValueError("prompt is empty; give some text to decode")
    batch = model.tokenize(prompt)
    ids = batch["input_ids"]
    sites = [f"resid_post.{layer}" for layer in range(model.n_layers)]
    _, acts = model.run(ids, batch["attention_mask"], read=sites, logits=False)
    hidden = torch.stack([acts[s][0] for s in sites])  # [layers, positions, d]
    decoded = LayerDecoder(model, memory_mb=memory_mb).decode(hidden, top_k=top_k, entropy=True, reference=hidden[-1])
    top_tokens = [[model.token_strings(decoded.topk_ids[li, pos].tolist()) for pos in range(ids.shape[1])]
                  for li in range(model.n_layers)]
    return LogitLensResult(
        model=model.name, input_tokens=model.token_strings(ids[0].tolist()), layers=list(range(model.n_layers)),
        top_ids=decoded.topk_ids, top_probs=decoded.topk_probs, top_tokens=top_tokens,
        entropy=decoded.entropy, kl_to_final=decoded.kl_to_reference,
    )
