"""Report sections on where knowledge and behaviour live: IKS (knowledge layers), a
steering sweep, and an SAE panel when an SAE is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from interlayer.errors import InterlayerError
from interlayer.options import CONTEXT_LENGTH

from .base import ReportContext, SectionResult
from .summary import Panel

STEERING_DATASET = "persona:agreeableness"
STEERING_COEFS = (-8.0, -4.0, 4.0, 8.0)


def iks_section(ctx: ReportContext) -> SectionResult:
    from interlayer.lens import iks_on_data
    from interlayer.lens.qa_data import load_qa

    p = ctx.profile
    data = ctx.qa_data or "nq"
    passage = any(r.passage for r in load_qa(data, p.iks_questions).records)
    res = iks_on_data(ctx.model, data, p.iks_questions, passage=passage, max_new_tokens=p.iks_steps, batch_size=4,
                      progress=False)
    mean = res.mean
    hist = res.histogram
    mode = max(hist, key=hist.get)
    low = int(np.argmin(mean))
    source = (f"the questions of {data}" if ctx.qa_data else "NQ-open") + (" with their gold passages" if passage else "")
    prose = [f"Data: {source}.",
             f"While answering {res.n} questions ({res.values.shape[0]} decoding steps), the FFN changes the "
             f"next-token distribution least (lowest IKS) at layer {res.layers[low]} and most at layer "
             f"{res.layers[int(np.argmax(mean))]}.",
             f"Among the fusion candidates {res.candidates}, l* = {res.layer} (mean IKS {mean[res.layers.index(res.layer)]:.4f}); "
             f"per step the choice falls most often on layer {mode} ({hist[mode]} of {sum(hist.values())} steps).",
             "This is the project's reading of LFD's internal knowledge score (see the README)."]
    payload = {k: v for k, v in res.to_json().items() if k not in ("values", "chosen")}  # per-step data stay out
    payload["data"] = source
    lo, hi = res.interval()
    sentence = (f"IKS puts the knowledge layer l* at layer {res.layer} (relative depth {ctx.depth(res.layer):.2f}), "
                f"the candidate whose FFN changes the next-token distribution least.")
    panel = Panel("IKS", "internal knowledge score (JSD, mean over steps)", ctx.model.n_layers, list(res.layers),
                  mean.tolist(), lo.tolist(), hi.tolist(), f"95% bootstrap over {res.values.shape[0]} decoding steps",
                  res.layer, "l* (lowest IKS among the candidates)", sentence, data=source)
    return SectionResult(payload, prose, [res.plot()], {"iks": res.to_frame()}, [panel])


def steering_section(ctx: ReportContext) -> SectionResult:
    from interlayer.steering import sweep, train_vectors

    n = ctx.model.n_layers
    layers = sorted({n // 4, n // 2, (3 * n) // 4})
    p = ctx.profile
    dataset = ctx.steering_dataset or STEERING_DATASET
    vector = train_vectors(ctx.model, dataset, layers, normalize=False, n=p.steering_pairs, progress=False)
    res = sweep(ctx.model, vector, dataset, layers, list(STEERING_COEFS), n=p.steering_items,
                perplexity_tokens=128, progress=False)
    best = res.best
    random_max = float(np.abs(res.random_shift).max())
    dataset = dataset if isinstance(dataset, str) else f"{len(dataset)} custom contrast pairs"
    prose = [f"Data: {dataset}" + (" (packaged)." if ctx.steering_dataset is None else "."),
             f"A mean-difference vector (from {p.steering_pairs} contrast pairs) was added at "
             f"layers {layers} with coefficients {list(STEERING_COEFS)} (multiples of the raw mean difference).",
             f"The largest shift in P(matching) within the perplexity bound is {best['shift']:+.3f} at layer "
             f"{best['layer']}, coefficient {best['coef']:g} (Δ perplexity {best['delta_perplexity']:+.2f}); a random "
             f"direction of the same norm moves it by at most {random_max:.3f} anywhere.",
             f"Unsteered, P(matching) is {res.base:.3f} on {res.n} held-out items."]
    numbers = {**res.to_json(), "data": dataset}
    return SectionResult(numbers, prose, [res.plot()], {"steering_sweep": res.to_frame()},
                         [_steering_panel(ctx, res, dataset, random_max)])


def _steering_panel(ctx: ReportContext, res: Any, dataset: str, random_max: float) -> Panel:
    """Per steered layer, the largest shift over the coefficients with that cell's interval;
    the marked layer is the sweep's best cell, unless a random direction does as well."""
    best = res.best
    cells = [int(np.argmax(row)) for row in res.shift]
    value = [float(res.shift[i, j]) for i, j in enumerate(cells)]
    low = high = None
    if res.shift_low is not None:
        low = [float(res.shift_low[i, j]) for i, j in enumerate(cells)]
        high = [float(res.shift_high[i, j]) for i, j in enumerate(cells)]
    beats = best["shift"] > random_max
    sentence = (f"Steering toward {dataset} works best at layer {best['layer']} (shift {best['shift']:+.3f}, "
                f"coefficient {best['coef']:g})" + (", above any random direction's effect." if beats else
                f", but a random direction moves P(matching) as much ({random_max:.3f}): no layer is shown to steer."))
    return Panel("Steering", "largest shift in P(matching) over the coefficients", ctx.model.n_layers, list(res.layers),
                 value, low, high, f"95% bootstrap over {res.n} held-out items", best["layer"] if beats else None,
                 "best steering layer" if beats else "", sentence, reference=random_max,
                 reference_label="largest random-direction |shift|", data=dataset)


# ------------------------------------------------------------------------ SAE
def check_sae_dir(path: str, model_name: str | None = None, d_model: int | None = None,
                  n_layers: int | None = None) -> dict[str, Any]:
    """The config of the SAE at ``path`` (any format :func:`interlayer.saes.sae_formats`
    names, recognised by content), checked against the model before any computation:
    its width must be the model's, its site one the model has, its model (when it names
    one) this model."""
    from interlayer.saes.loading import load
    from interlayer.saes.pathcheck import check_sae_path

    check_sae_path(path)
    sae = load(path, verify=False)  # no known format: each one tried, and why not; a damaged file: named
    cfg = sae.cfg
    if not cfg.site:
        raise InterlayerError(f"--sae {path!r} names no hook site; the report needs one")
    if d_model is not None and sae.d_in != d_model:
        raise InterlayerError(f"--sae {path!r} reads vectors of width {sae.d_in}, but the model has "
                              f"d_model={d_model}: it belongs to another model")
    if model_name is not None and cfg.model and Path(str(cfg.model)).name != Path(str(model_name)).name:
        raise InterlayerError(f"--sae {path!r} was trained on {cfg.model!r}, not {model_name!r}")
    if n_layers is not None:
        from interlayer.model.sites import parse_site

        parse_site(cfg.site, n_layers)
    return cfg.to_dict()


def sae_section(ctx: ReportContext) -> SectionResult:
    from interlayer.saes import evaluate_sae
    from interlayer.saes.loading import load

    if ctx.sae_dir is None:
        raise InterlayerError("no SAE given (--sae DIR)")
    # identity and behaviour on held-out tokens: a refused SAE fails this section with the reason
    sae = load(ctx.sae_dir, ctx.model, verify=True, quiet=True)
    site = sae.cfg.site
    text, source = ctx.sample_text()
    res = evaluate_sae(sae, ctx.model, text, site, tokens=ctx.profile.sae_tokens,
                       context_length=min(CONTEXT_LENGTH, ctx.model.max_positions), progress=False)
    m = {**res.metrics, **res.spliced}
    contexts = _sample_contexts(ctx, sae, site)
    prose = [f"Data: {int(m.get('tokens', 0))} tokens of {source}.",
             f"The SAE at {site} ({sae.cfg.arch}, {sae.d_sae} latents) keeps {m.get('l0', float('nan')):.1f} latents "
             f"per token and explains {m.get('explained_variance', float('nan')):.1%} of the variance "
             f"(NMSE {m.get('nmse', float('nan')):.3f}) on {int(m.get('tokens', 0))} tokens of sample text.",
             f"Spliced into the model it recovers {m.get('ce_loss_recovered', float('nan')):.1%} of the cross-entropy "
             "lost by zero-ablating the site."]
    return SectionResult({"site": site, "metrics": m, "top_contexts": contexts.to_dict(orient="records")}, prose,
                         [res.eps_histogram(), res.zf_plot(), res.firing_histogram()],
                         {"sae_metrics": res.to_frame(), "sae_top_contexts": contexts})


def top_contexts(ctx: ReportContext, sae: Any, site: str, latents: int = 3, per_latent: int = 5,
                 window: int = 8) -> pd.DataFrame:
    """Deprecated: :func:`interlayer.saes.top_contexts` on the sample text (one release)."""
    import warnings

    warnings.warn("interlayer.report.sections_methods.top_contexts is deprecated; use interlayer.saes.top_contexts",
                  DeprecationWarning, stacklevel=2)
    return _sample_contexts(ctx, sae, site, latents=latents, per_latent=per_latent, window=window)


def _sample_contexts(ctx: ReportContext, sae: Any, site: str, **options: int) -> pd.DataFrame:
    """The SAE's top-activating contexts on the packaged sample text (:func:`interlayer.saes.top_contexts`)."""
    from interlayer.saes import top_contexts as saes_top_contexts

    return saes_top_contexts(sae, ctx.model, ctx.sample_text()[0], site, tokens=ctx.profile.sae_tokens,
                             context_length=min(CONTEXT_LENGTH, ctx.model.max_positions), **options)


__all__ = ["check_sae_dir", "iks_section", "sae_section", "steering_section", "top_contexts"]
