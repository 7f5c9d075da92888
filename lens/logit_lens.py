"""The logit lens (nostalgebraist 2020): decode the residual stream after every
layer through the model's own final norm and unembedding. With ``lens=`` a tuned
lens decodes instead (drop-in)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from interlayer.model.adapter import ModelAdapter
from interlayer.model.sites import Site
from interlayer.store.collect import collect
from interlayer.decoding import DEFAULT_MEMORY_MB, LOGIT_LENS, LayerDecoder, Lens
from interlayer.errors import InterlayerError
from interlayer.intervals import PROBABILITY, mean_interval
from interlayer.results import Result, decode_array, decode_frame, encode_array, encode_frame, require
from interlayer.plot_text import plot_text


@dataclass
class LogitLensResult(Result):
    """Per-layer decoding of prompts at every position (or the last).

    Rows are (prompt, position) pairs. ``top_ids``/``top_probs`` are
    ``[layers, rows, k]``; ``entropy`` and ``kl_to_final`` (KL(final || layer), nats)
    are ``[layers, rows]``; ``target_probs`` and ``target_ranks`` are
    ``[layers, rows, n_targets]`` when targets were given.
    """

    model: str
    lens: str
    prompts: list[str]
    rows: pd.DataFrame
    """One row per decoded position: prompt, position, input_token."""
    layers: list[int]
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[list[str]]]
    entropy: torch.Tensor
    kl_to_final: torch.Tensor
    targets: list[str]
    target_ids: list[int]
    target_probs: torch.Tensor | None
    target_ranks: torch.Tensor | None

    @property
    def input_tokens(self) -> list[str]:
        """The input token (as text) at each decoded row, in the order of ``rows``."""
        return self.rows.input_token.tolist()

    def to_json(self) -> dict[str, Any]:
        """Every field, tensors as ``{"dtype", "shape", "values"}``: what :meth:`save` writes."""
        return {
            "model": self.model, "lens": self.lens, "prompts": self.prompts, "rows": encode_frame(self.rows),
            "layers": self.layers, "top_ids": encode_array(self.top_ids), "top_probs": encode_array(self.top_probs),
            "top_tokens": self.top_tokens, "entropy": encode_array(self.entropy),
            "kl_to_final": encode_array(self.kl_to_final), "targets": self.targets, "target_ids": self.target_ids,
            "target_probs": encode_array(self.target_probs), "target_ranks": encode_array(self.target_ranks),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "LogitLensResult":
        """The result :meth:`to_json` described."""
        require(payload, "model", "lens", "prompts", "rows", "layers", "top_ids", "kl_to_final", what="LogitLensResult")
        return cls(
            model=payload["model"], lens=payload["lens"], prompts=list(payload["prompts"]),
            rows=decode_frame(payload["rows"]), layers=[int(x) for x in payload["layers"]],
            top_ids=decode_array(payload["top_ids"], "torch"), top_probs=decode_array(payload["top_probs"], "torch"),
            top_tokens=payload["top_tokens"], entropy=decode_array(payload["entropy"], "torch"),
            kl_to_final=decode_array(payload["kl_to_final"], "torch"), targets=list(payload["targets"]),
            target_ids=[int(x) for x in payload["target_ids"]],
            target_probs=decode_array(payload["target_probs"], "torch"),
            target_ranks=decode_array(payload["target_ranks"], "torch"),
        )

    def headline(self) -> dict[str, Any]:
        """Model, lens, sizes, and the last layer's top-1 at the last position of prompt 0."""
        last = max(r for r, p in enumerate(self.rows.prompt) if p == 0)
        out: dict[str, Any] = {"model": self.model, "lens": self.lens, "prompts": len(self.prompts),
                               "positions": len(self.rows), "layers": len(self.layers),
                               "final top-1 (prompt 0, last position)": self.top_tokens[-1][last][0],
                               "mean KL to final at layer 0 (nats)": float(self.kl_to_final[0].mean())}
        for t, name in enumerate(self.targets):
            out[f"final p({name})"] = float(self.target_probs[-1, last, t])
        return out

    def to_frame(self) -> pd.DataFrame:
        """Long format: one row per (layer, prompt, position, rank); target columns
        ``p[<target>]`` and ``rank[<target>]`` when targets were given."""
        records = []
        for li, layer in enumerate(self.layers):
            for r, row in enumerate(self.rows.itertuples(index=False)):
                extra = {}
                for t, name in enumerate(self.targets):
                    extra[f"p[{name}]"] = float(self.target_probs[li, r, t])
                    extra[f"rank[{name}]"] = int(self.target_ranks[li, r, t])
                for rank in range(self.top_ids.shape[-1]):
                    records.append({
                        "layer": layer, "prompt": row.prompt, "position": row.position, "input_token": row.input_token,
                        "rank": rank, "token": self.top_tokens[li][r][rank], "token_id": int(self.top_ids[li, r, rank]),
                        "prob": float(self.top_probs[li, r, rank]), "entropy": float(self.entropy[li, r]),
                        "kl_to_final": float(self.kl_to_final[li, r]), **extra,
                    })
        return pd.DataFrame(records)

    def table(self, prompt: int = 0) -> pd.DataFrame:
        """Wide format for one prompt: layers down, positions across, the top-1 token in each cell."""
        picked = [r for r, p in enumerate(self.rows.prompt) if p == prompt]
        if not picked:
            raise InterlayerError(f"prompt {prompt} is out of range; valid prompts are 0..{len(self.prompts) - 1}")
        columns = [f"{self.rows.position[r]}:{self.rows.input_token[r]}" for r in picked]
        data = [[self.top_tokens[li][r][0] for r in picked] for li in range(len(self.layers))]
        return pd.DataFrame(data, index=pd.Index(self.layers, name="layer"), columns=columns)

    def plot(self, prompt: int = 0) -> go.Figure:
        """The classic picture: layer x position heatmap coloured by top-1 probability,
        the top token written in each cell."""
        picked = [r for r, p in enumerate(self.rows.prompt) if p == prompt]
        if not picked:
            raise InterlayerError(f"prompt {prompt} is out of range; valid prompts are 0..{len(self.prompts) - 1}")
        text = [[plot_text(self.top_tokens[li][r][0]) for r in picked] for li in range(len(self.layers))]
        hover = [[f"layer {layer}, position {self.rows.position[r]}<br>top: {plot_text(self.top_tokens[li][r][0])}"
                  f" ({float(self.top_probs[li, r, 0]):.3f})<br>entropy {float(self.entropy[li, r]):.2f}"
                  f"<br>KL to final {float(self.kl_to_final[li, r]):.2f}" for r in picked]
                 for li, layer in enumerate(self.layers)]
        fig = go.Figure(go.Heatmap(
            z=self.top_probs[:, picked, 0].numpy(),
            x=[f"{self.rows.position[r]}:{plot_text(self.rows.input_token[r])}" for r in picked],
            y=[str(layer) for layer in self.layers], text=text, texttemplate="%{text}", hovertext=hover,
            hoverinfo="text", colorscale="Blues", zmin=0, zmax=1, colorbar={"title": "p(top-1)"},
        ))
        fig.update_layout(title=f"{self.lens.capitalize()} lens: {plot_text(self.model)}", xaxis_title="input position",
                          yaxis_title="layer (resid_post)")
        return fig

    def plot_curves(self) -> go.Figure:
        """Per-layer curves averaged over the decoded positions, with 95% bootstrap
        intervals over the positions: entropy, KL to the final layer, and each target's probability."""
        fig = make_subplots(rows=1, cols=3, subplot_titles=("entropy (nats)", "KL to final (nats)", "target probability"))
        series = [("entropy", self.entropy, None, 1), ("KL", self.kl_to_final, None, 2)]
        series += [(f"p({plot_text(name)})", self.target_probs[:, :, t], PROBABILITY, 3)
                   for t, name in enumerate(self.targets)]
        for name, values, bounds, col in series:
            per_row = values.double().numpy().T  # [rows, layers]
            low, high = mean_interval(per_row, bounds=bounds)
            mean = per_row.mean(0)
            fig.add_trace(go.Scatter(x=self.layers, y=mean.tolist(), name=name, error_y={
                "type": "data", "symmetric": False, "array": (high - mean).tolist(),
                "arrayminus": (mean - low).tolist()}), 1, col)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(title=f"{self.lens.capitalize()} lens by layer: {plot_text(self.model)}")
        return fig


def logit_lens(model: ModelAdapter, prompts: str | Sequence[str], *, targets: Sequence[str] = (),
               positions: str = "all", top_k: int = 1, lens: Lens = LOGIT_LENS, memory_mb: float = DEFAULT_MEMORY_MB,
               batch_size: int = 8, progress: bool = False) -> LogitLensResult:
    """Decode ``resid_post`` of every layer for ``prompts``.

    Args:
        prompts: one prompt or several.
        targets: strings whose first token's probability and rank to report at every
            layer (e.g. ``[" Paris"]``).
        positions: ``"all"`` (BOS included) or ``"last"``.
        top_k: tokens kept per layer and position.
        lens: the :class:`~interlayer.decoding.LogitLens` (default) or any lens, e.g. a
            :class:`~interlayer.lens.TunedLens`.
        progress: show progress bars over the forward passes and the decoding.

    The last layer's row is the model's own prediction; every KL is measured against it.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or any(not p for p in prompts):
        raise InterlayerError("prompts must be non-empty strings")
    if not 1 <= top_k <= model.vocab_size:
        raise InterlayerError(f"top_k={top_k} is out of range; valid values are 1..{model.vocab_size}")
    if positions not in ("all", "last"):
        raise InterlayerError(f"positions={positions!r}; valid choices: 'all', 'last'")
    if model.tokenizer is None:
        raise InterlayerError(f"{model.name} has no tokenizer; the logit lens needs text prompts")
    encoded = [model.tokenizer(p).input_ids for p in prompts]
    target_ids = []
    for name in targets:
        ids = model.tokenizer(name, add_special_tokens=False).input_ids
        if not ids:
            raise InterlayerError(f"target {name!r} has no tokens")
        target_ids.append(int(ids[0]))
    sites = [Site(layer, "resid_post").name for layer in range(model.n_layers)]
    if positions == "all":
        acts = collect(model, encoded, sites, select="positions", positions=[list(range(len(e))) for e in encoded],
                       batch_size=batch_size, progress=progress)
    else:
        acts = collect(model, encoded, sites, select="last", batch_size=batch_size, progress=progress)
    meta = acts.to_frame()
    hidden = acts.stack(sites)  # [layers, rows, d]
    layers = list(range(model.n_layers))
    decoder = LayerDecoder(model, memory_mb=memory_mb, lens=lens)
    decoded = decoder.decode(hidden, top_k=top_k, entropy=True, reference=hidden[-1],
                             token_ids=target_ids or None, ranks=bool(target_ids), layers=layers, progress=progress)
    token_position = meta.position if "position" in meta else pd.Series([len(e) - 1 for e in encoded])
    rows = pd.DataFrame({
        "prompt": meta.sequence.to_numpy(),
        "position": token_position.to_numpy(),
        "input_token": [model.token_strings([encoded[s][p]])[0] for s, p in zip(meta.sequence, token_position)],
    })
    top_tokens = [[model.token_strings(decoded.top_ids[li, r].tolist()) for r in range(len(rows))] for li in layers]
    return LogitLensResult(
        model=model.name, lens=lens.name, prompts=prompts, rows=rows, layers=layers,
        top_ids=decoded.top_ids, top_probs=decoded.top_probs, top_tokens=top_tokens, entropy=decoded.entropy,
        kl_to_final=decoded.kl_to_final, targets=list(targets), target_ids=target_ids,
        target_probs=decoded.token_logprobs.exp() if target_ids else None,
        target_ranks=decoded.token_ranks if target_ids else None,
    )
