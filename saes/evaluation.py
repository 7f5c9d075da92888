"""Evaluating an SAE: reconstruction, sparsity, quasi-orthogonality, and what splicing
its reconstruction into the model does to the next-token loss.

Reconstruction (over tokens ``b``, in the activations' own space)::

    nmse               = sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b||^2
    explained_variance = 1 - sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2
    l0                 = mean_b #{i : f_bi > 0}

A transcoder (``site`` -> ``output_site``, e.g. ``mlp_in.6`` -> ``mlp_out.6``) is
evaluated on the same path: ``x_hat`` is its prediction from the input site's rows and
the sums compare it with the output site's rows ``y`` (``x`` above becomes ``y``); the
spliced pass replaces the output site by the prediction computed from the input site of
the same pass, and zero-ablation zeroes the output site.

``nmse_normalized`` is the same ratio in the SAE's normalised space (its training
objective). A latent is dead if it never fires on the evaluation tokens and dense if
it fires on more than 10% of them.

``mse_standardized`` is the top-AFA authors' "normalized MSE": the mean over tokens and
features of ``((x - x_hat) / (std(x) + 1e-5))^2``, i.e. the per-element squared error in
the per-token standardised space (for a ``standardize`` SAE, its own training MSE up to
the ``1e-5``); they report it on their last training batch, we on the evaluation tokens.

ε_LBO (Lee et al. 2025), per token, in one of two forms::

    eps_lbo = | ||z||^2 - ||f~||^2 | / ((h - 1) ||f~||^2)

* ``authors`` (their notebook): ``z`` the SAE's (normalised) input ``x`` and
  ``f~ = [f_i ||W_dec,i|| for each i ; ||b_dec||]``, b_dec an always-on feature;
* ``centred``: ``z = x - b_dec`` and ``f~ = [f_i ||W_dec,i||]``, the quantities a
  centred top-AFA SAE's selection and AFA loss match.

``eps_lbo_*`` is in the form of the SAE's own training (``centred`` for a centred
top-AFA SAE, ``authors`` for every other SAE; ``eps_lbo_form`` says which);
``eps_lbo_authors_median`` and ``eps_lbo_centred_median`` give both.

``f_norm_ratio_*`` is ``||f|| / ||x||`` per token in the SAE's space (top-AFA's AFA loss
pulls it towards 1), ``f_norm_ratio_centred_*`` is ``||f|| / ||x - b_dec||`` (top-AFA's
selection target).

Memory is flat in the number of tokens: the sums are running sums, the per-token
diagnostics are kept for at most ``per_token_rows`` tokens (default 65,536; beyond, a
seeded uniform sample of that many; ``None`` keeps every token), and the medians are
exact while every token is kept, else within a relative 0.1% of the exact ones (a
quantile sketch; :mod:`interlayer.saes.reconstruction`).

Splicing: the site's activation at every non-BOS position is replaced by the SAE's
reconstruction (or by zeros, the baseline), and the rest of the model runs on it::

    ce_loss_recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean)
    kl_sae            = mean over positions of KL(p_clean || p_sae)

The positions are the spliced ones that have a next token in their context (every
non-BOS token but each context's last); the BOS position, which no splice changes,
is not counted.

:func:`evaluate_saes` evaluates several SAEs of one site together: one clean pass
(whose site activations feed every SAE's reconstruction metrics), and for each SAE
and the zero-ablation only the blocks after the site (the store's shared-prefix
variants). The store keeps the final-norm output of each pass, and logits are made
``rows_per_step`` rows at a time against the clean ones, so N SAEs cost one clean
pass, one zero-ablated pass and N spliced passes, never more than a few row-chunks of
logits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from interlayer.progress import tqdm

from interlayer.store import contexts_for_tokens
from interlayer.store.collect import Activations, Edit, stream_variants
from interlayer.model.adapter import ModelAdapter
from interlayer.decoding import LayerDecoder
from interlayer.errors import InterlayerError
from interlayer.results import Result, decode_array, decode_frame, encode_array, encode_frame, require
from interlayer.model.sites import LN_FINAL
from interlayer.plot_text import plot_text

from .reconstruction import DENSE_FREQUENCY, PER_TOKEN_ROWS, Accumulator, eps_lbo_form
from .sae import SAE

SPLICED_KEYS = ("ce_clean", "ce_sae", "ce_zero", "ce_loss_recovered", "eval_positions")
"""The numbers of a spliced evaluation (:func:`evaluate_saes`)."""


@dataclass
class SAEEvaluation(Result):
    """Metrics of one SAE on some tokens, with the per-token and per-latent data behind them."""

    metrics: dict[str, float]
    per_token: pd.DataFrame
    """``norm_z``, ``norm_f_tilde``, ``norm_f``, ``norm_x``, ``eps_lbo``, ``l0`` (and the centred
    norm and both ε_LBO forms) per token: every token's when the evaluation had at most
    ``per_token_rows`` of them, else a seeded uniform sample of that many
    (:class:`~interlayer.saes.reconstruction.Reservoir`; ``len(per_token) < metrics["tokens"]``
    says so); the plots read it."""
    firing_frequency: np.ndarray
    """Per latent: the fraction of tokens it fires on."""
    d_sae: int
    label: str = ""
    spliced: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """The metrics as a one-row DataFrame."""
        return pd.DataFrame([{**self.metrics, **self.spliced}], index=[self.label or "sae"])

    def to_json(self) -> dict[str, Any]:
        """The flat record ``interlayer sae eval --out`` writes (metrics and spliced numbers,
        ``tokens`` as ``eval_tokens``), plus ``d_sae``, ``label``, ``spliced_keys`` and the
        per-token and per-latent data under ``per_token`` and ``firing_frequency``."""
        record: dict[str, Any] = {**self.metrics, **self.spliced}
        if "tokens" in record:
            record["eval_tokens"] = record.pop("tokens")
        return {**record, "d_sae": self.d_sae, "label": self.label, "spliced_keys": list(self.spliced),
                "metric_keys": list(self.metrics), "per_token": encode_frame(self.per_token),
                "firing_frequency": encode_array(self.firing_frequency)}

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "SAEEvaluation":
        """The evaluation :meth:`to_json` described. A ``metrics.json`` of ``sae eval`` or
        ``sae train`` (no per-token data in it) loads with its metrics, and empty per-token data."""
        require(payload, "eval_tokens", what="SAEEvaluation")
        spliced_keys = payload.get("spliced_keys", [k for k in SPLICED_KEYS if k in payload])
        metric_keys = payload.get("metric_keys")
        if metric_keys is None:  # a CLI metrics.json: its numbers and the eps_lbo form, less the spliced ones
            metric_keys = [k for k, v in payload.items() if k == "eps_lbo_form" or (
                isinstance(v, (int, float)) and not isinstance(v, bool) and k not in spliced_keys)]
        metrics = {k: payload["eval_tokens" if k == "tokens" else k] for k in
                   ("tokens" if k == "eval_tokens" else k for k in metric_keys)}
        spliced = {k: payload[k] for k in spliced_keys}
        frame = decode_frame(payload["per_token"]) if payload.get("per_token") else pd.DataFrame()
        freq = decode_array(payload.get("firing_frequency")) if payload.get("firing_frequency") else np.zeros(0)
        return cls(metrics, frame, freq, int(payload.get("d_sae", payload.get("latents", len(freq)))),
                   str(payload.get("label", "")), spliced)

    def headline(self) -> dict[str, Any]:
        """The label, the latent count and the main metrics."""
        keys = ("tokens", "l0", "explained_variance", "nmse", "dead_frac", "ce_loss_score", "delta_ce")
        return {"label": self.label or "sae", "latents": self.d_sae,
                **{k: v for k, v in {**self.metrics, **self.spliced}.items() if k in keys}}

    def zf_plot(self, quantiles: tuple[float, ...] = (0.5, 0.9)) -> go.Figure:
        """``||f~|| / ||z||`` per token against ``||z||``, with the quasi-orthogonality bands
        ``1 / sqrt(1 ± eps (h - 1))`` at the given quantiles of ε_LBO."""
        t = self.per_token
        ratio = t.norm_f_tilde / t.norm_z.clip(lower=1e-30)
        fig = go.Figure(go.Scattergl(x=t.norm_z, y=ratio, mode="markers", marker={"size": 3, "opacity": 0.4},
                                     name="tokens"))
        h = self.d_sae
        for q in quantiles:
            eps = float(np.quantile(t.eps_lbo, q))
            for sign in (1, -1):
                inner = 1 + sign * eps * (h - 1)
                if inner > 0:
                    fig.add_hline(y=1 / math.sqrt(inner), line_dash="dot",
                                  annotation_text=f"ε={eps:.2e} (q{int(q * 100)}) {'+' if sign > 0 else '−'}")
        fig.update_layout(title=plot_text(f"ZF plot {self.label}".strip()), xaxis_title="||z||",
                          yaxis_title="||f~|| / ||z||")
        return fig

    def eps_histogram(self) -> go.Figure:
        """The distribution of ε_LBO over tokens (log10)."""
        values = np.log10(np.maximum(self.per_token.eps_lbo.to_numpy(), 1e-30))
        fig = go.Figure(go.Histogram(x=values, nbinsx=60))
        fig.update_layout(title=plot_text(f"ε_LBO {self.label}".strip()), xaxis_title="log10 ε_LBO", yaxis_title="tokens")
        return fig

    def firing_histogram(self) -> go.Figure:
        """Per-latent firing frequency (log10; dead latents in a bin of their own at the left)."""
        freq = self.firing_frequency
        floor = math.log10(0.5 / max(1, int(self.metrics["tokens"])))
        values = np.where(freq > 0, np.log10(np.maximum(freq, 1e-30)), floor)
        fig = go.Figure(go.Histogram(x=values, nbinsx=60))
        fig.update_layout(title=plot_text(f"Latent firing frequency {self.label}".strip()),
                          xaxis_title=f"log10 firing frequency (dead at {floor:.1f})", yaxis_title="latents")
        return fig

    def plot(self) -> go.Figure:
        """The ZF plot (:meth:`zf_plot`)."""
        return self.zf_plot()


def evaluate_activations(sae: SAE, activations: Any, label: str = "", batch_size: int = 4096, *,
                         per_token_rows: int | None = PER_TOKEN_ROWS) -> SAEEvaluation:
    """Reconstruction and sparsity metrics on activations: a ``[rows, d_in]`` tensor, an
    iterable of such tensors (e.g. batches of a store), or an ActivationStore and site
    as ``(store, site)``. ``per_token_rows``: how many tokens' diagnostics to keep (a
    seeded sample beyond; ``None``: every token's, memory O(tokens)); memory is otherwise
    flat in the number of tokens (:mod:`interlayer.saes.reconstruction`)."""
    acc = Accumulator(sae, per_token_rows)
    was_training = sae.training
    sae.eval()
    try:
        if isinstance(activations, torch.Tensor):
            sae.check_input(activations)
            for start in range(0, activations.shape[0], batch_size):
                acc.add(activations[start:start + batch_size])
        elif isinstance(activations, tuple):
            store, site = activations
            for batch in store.batches(site, batch_size, shuffle=False):
                sae.check_input(batch)
                acc.add(batch)
        else:
            for batch in activations:
                sae.check_input(batch)
                acc.add(batch)
    finally:
        sae.train(was_training)
    metrics, tokens, freq = acc.result()
    return SAEEvaluation(metrics, pd.DataFrame(tokens), freq, sae.d_sae, label)


def _check_rows(clean: Activations, other: Activations) -> None:
    if not torch.equal(clean.meta["sequence"], other.meta["sequence"]) or \
            not torch.equal(clean.meta["position"], other.meta["position"]):
        raise InterlayerError("the clean and spliced passes produced different rows; this is a bug in interlayer")


def _score_chunk(chunks: list[Activations], model: ModelAdapter, rows_per_step: int, ce: np.ndarray,
                 kl: np.ndarray) -> int:
    """Add one chunk's summed next-token CE (every variant) and KL(clean || variant) to
    ``ce`` and ``kl``, from the final-norm rows, ``rows_per_step`` rows of logits at a
    time; returns the number of positions scored."""
    clean = chunks[0]
    for other in chunks[1:]:
        _check_rows(clean, other)
    targets, has_next = clean.next_tokens()
    targets = targets[has_next]
    normed = [c[LN_FINAL][has_next] for c in chunks]
    nll, divergence = LayerDecoder(model).variant_nll_and_kl(normed, targets, rows_per_step=rows_per_step)
    for v in range(len(chunks)):
        ce[v] += nll[v]
        kl[v] += divergence[v]
    return int(has_next.sum())


def evaluate_sae(sae: SAE, model: ModelAdapter, data: Any, site: str | None = None, *, tokens: int = 8192,
                 context_length: int = 128, batch_size: int = 8, text_field: str = "text", label: str = "",
                 memory_mb: float = 256.0, progress: bool = True,
                 per_token_rows: int | None = PER_TOKEN_ROWS) -> SAEEvaluation:
    """Evaluate ``sae`` at ``site`` (default: the site in its config) on ``tokens`` tokens of
    ``data``, packed into contexts: reconstruction metrics on the site's activations
    (read in the clean pass), and CE loss recovered and KL with the reconstruction
    spliced in, against zero-ablation. See the module docstring for the formulas;
    :func:`evaluate_saes` with one SAE (``per_token_rows`` as there)."""
    return evaluate_saes([sae], model, data, site, tokens=tokens, context_length=context_length, batch_size=batch_size,
                         text_field=text_field, labels=[label], memory_mb=memory_mb, progress=progress,
                         per_token_rows=per_token_rows)[0]


def evaluate_saes(saes: Sequence[SAE], model: ModelAdapter, data: Any, site: str | None = None, *, tokens: int = 8192,
                  context_length: int = 128, batch_size: int = 8, text_field: str = "text",
                  labels: Sequence[str] | None = None, memory_mb: float = 256.0, rows_per_step: int = 128,
                  progress: bool = True, per_token_rows: int | None = PER_TOKEN_ROWS) -> list[SAEEvaluation]:
    """Evaluate several SAEs of one site on the same ``tokens`` tokens of ``data``: one
    clean pass, one zero-ablated pass and one spliced pass per SAE, each spliced pass
    running only the blocks after the site (see the module docstring). The numbers
    equal :func:`evaluate_sae` of each SAE alone. Each SAE keeps the per-token
    diagnostics of at most ``per_token_rows`` tokens (the same seeded sample for every
    SAE; ``None``: every token's), so memory is flat in ``tokens``."""
    saes = list(saes)
    labels = list(labels) if labels is not None else [""] * len(saes)
    site = _evaluated_site(saes, labels, model, site)
    if tokens < 1:
        raise InterlayerError(f"tokens must be at least 1, got {tokens}")
    if rows_per_step < 1:
        raise InterlayerError(f"rows_per_step must be at least 1, got {rows_per_step}")
    output = _output_site(saes, model, site)
    saes = [sae.to(model.device) for sae in saes]
    context_length = min(context_length, model.max_positions)
    n_contexts = contexts_for_tokens(model, tokens, context_length)
    variants = _variants(saes, site, output)
    read = [site, LN_FINAL] if output == site else [site, output, LN_FINAL]
    accs = [Accumulator(sae, per_token_rows) for sae in saes]
    ce = np.zeros(len(variants))  # clean, each SAE, zero
    kl = np.zeros(len(variants))
    positions = 0
    states = [sae.training for sae in saes]
    for sae in saes:
        sae.eval()
    bar = tqdm(total=n_contexts, unit="ctx", disable=not progress, desc="sae eval" if len(saes) == 1 else f"eval {len(saes)} SAEs")
    try:
        with torch.no_grad():
            for chunks in stream_variants(model, data, read, variants, select="tokens",
                                          context_length=context_length, batch_size=batch_size, limit=n_contexts,
                                          text_field=text_field, memory_mb=memory_mb, output_device="model",
                                          progress=False,
                                          # a perfect reconstruction is a no-op by design, and a
                                          # non-finite one shows in the spliced CE: no write gates
                                          check_edits=False):
                target = None if output == site else chunks[0][output]
                for acc in accs:
                    acc.add(chunks[0][site], target)
                positions += _score_chunk(chunks, model, rows_per_step, ce, kl)
                bar.update(chunks[0].n_sequences)
    finally:
        bar.close()
        for sae, state in zip(saes, states):
            sae.train(state)
    if positions == 0:
        raise InterlayerError(f"{data} produced no tokens to evaluate on")
    return [_evaluation(acc, label, i, ce, kl, positions) for i, (acc, label) in enumerate(zip(accs, labels))]


def _evaluated_site(saes: list[SAE], labels: list[str], model: ModelAdapter, site: str | None) -> str:
    """The site every SAE is evaluated at (``site``, else the one their configs name),
    after checking there is one, with a label per SAE and the model's width."""
    if not saes:
        raise InterlayerError("evaluate_saes needs at least one SAE")
    if len(labels) != len(saes):
        raise InterlayerError(f"{len(labels)} labels for {len(saes)} SAEs")
    if site is None:
        named = {s.cfg.site for s in saes}
        if None in named:
            raise InterlayerError("an SAE's config names no site; pass site=, e.g. 'resid_post.6'")
        if len(named) > 1:
            raise InterlayerError(f"the SAEs read different sites {sorted(named)}; evaluate them separately")
        site = named.pop()
    site = model.site(site).name
    for sae in saes:
        if sae.d_in != model.d_model:
            raise InterlayerError(f"the SAE has d_in={sae.d_in} but {site} of {model.name} has width {model.d_model}")
    return site


def _output_site(saes: list[SAE], model: ModelAdapter, site: str) -> str:
    """The site the SAEs write: ``site`` for autoencoders, else the transcoders' common
    output site (later in the pass than ``site``, of the transcoders' output width)."""
    outputs = {sae.cfg.output_site if sae.cfg.transcoder else None for sae in saes}
    if len(outputs) > 1:
        raise InterlayerError(f"the SAEs write different sites {sorted(map(str, outputs))} (transcoders and "
                              "autoencoders, or transcoders to different sites); evaluate them separately")
    output = outputs.pop()
    if output is None:
        if any(sae.cfg.transcoder for sae in saes):
            raise InterlayerError("a transcoder names no output_site; it cannot be spliced")
        return site
    output = model.site(output).name
    for sae in saes:
        if sae.cfg.output_width != model.d_model:
            raise InterlayerError(f"the transcoder outputs width {sae.cfg.output_width} but {output} of {model.name} "
                                  f"has width {model.d_model}")
    return output


def _variants(saes: list[SAE], site: str, output: str) -> list[dict[str, Any]]:
    """The passes of an evaluation: clean, each SAE spliced, and the written site zero-ablated.
    An autoencoder replaces ``site`` by its reconstruction; a transcoder replaces its output
    site by its prediction from ``site`` in the same pass (``Edit(source=site)``)."""
    source = None if output == site else site
    spliced = [{output: Edit(sae.reconstruct, rows="tokens", source=source)} for sae in saes]
    return [{}] + spliced + [{output: Edit(torch.zeros_like, rows="tokens")}]


def _evaluation(acc: Accumulator, label: str, i: int, ce: np.ndarray, kl: np.ndarray, positions: int) -> SAEEvaluation:
    """SAE ``i``'s evaluation: its reconstruction metrics and its spliced numbers (the
    summed CE and KL of variant ``1 + i`` against the clean and zero-ablated ones)."""
    metrics, per_token, freq = acc.result()
    spliced = {"ce_clean": ce[0] / positions, "ce_sae": ce[1 + i] / positions, "ce_zero": ce[-1] / positions,
               "kl_sae": kl[1 + i] / positions, "kl_zero": kl[-1] / positions}
    gap = spliced["ce_zero"] - spliced["ce_clean"]
    spliced["ce_loss_recovered"] = (spliced["ce_zero"] - spliced["ce_sae"]) / gap if gap != 0 else float("nan")
    spliced["eval_positions"] = positions
    return SAEEvaluation(metrics, pd.DataFrame(per_token), freq, acc.sae.d_sae, label, spliced)


__all__ = ["SAEEvaluation", "evaluate_activations", "evaluate_sae", "evaluate_saes", "eps_lbo_form", "DENSE_FREQUENCY",
           "SPLICED_KEYS"]
