"""Report sections on what each layer predicts: the model card, the logit lens, saturation
and latent language. The logit-lens curves and saturation share one store pass over
the packaged sample text, decoded once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from interlayer.options import CONTEXT_LENGTH

from interlayer.plot_text import plot_text

from .base import ReportContext, SectionResult, settings_of

if TYPE_CHECKING:
    from interlayer.lens.saturation import SaturationResult

EXAMPLE_PROMPTS: tuple[tuple[str, str], ...] = (
    ("The Eiffel Tower is in the city of", " Paris"),
    ("The capital of Japan is the city of", " Tokyo"),
    ("Water is made of hydrogen and", " oxygen"),
)
LATENT_PAIRS: tuple[tuple[str, str], ...] = (("fr", "zh"), ("de", "ja"), ("ru", "fr"))


def model_card(ctx: ReportContext) -> SectionResult:
    model = ctx.model
    params = sum(p.numel() for p in model.model.parameters())
    numbers: dict[str, Any] = {
        "model": model.name, "family": model.model_type, "class": type(model.model).__name__,
        "layers": model.n_layers, "d_model": model.d_model, "vocab_size": model.vocab_size, "parameters": params,
        "site_kinds": list(model.site_kinds()), "sites": len(model.sites()), "dtype": str(model.dtype).replace("torch.", ""),
        "device": str(model.device), "weights_sha256": model.weights_sha256(), "lens": ctx.lens.name,
        "profile": settings_of(ctx.profile),
    }
    table = pd.DataFrame({"property": list(numbers)[:12],
                          "value": [", ".join(v) if isinstance(v, list) else str(v) for v in list(numbers.values())[:12]]})
    prose = [f"{model.name} is a {model.model_type} model ({type(model.model).__name__}) with {model.n_layers} layers, "
             f"a residual stream of width {model.d_model} and a vocabulary of {model.vocab_size:,} tokens "
             f"({params / 1e6:.0f}M parameters, {numbers['dtype']} on {numbers['device']}).",
             f"Every block has the hook sites {', '.join(model.site_kinds())}: {numbers['sites']} in all.",
             f"This report ran with the '{ctx.profile.name}' profile and the {ctx.lens.name} lens."]
    return SectionResult(numbers, prose, [], {"model": table})


# ------------------------------------------------------------------ sample pass
def sample_decoding(ctx: ReportContext) -> "SaturationResult":
    """The saturation of the packaged sample text (:func:`interlayer.lens.saturation`
    with entropy and KL to the final layer): one store pass, decoded once, shared by the
    logit-lens curves and the saturation section."""
    from interlayer.lens.saturation import saturation
    from interlayer.model.loading import SAMPLE_TEXT

    model = ctx.model
    return saturation(model, str(SAMPLE_TEXT), tokens=ctx.profile.sample_tokens,
                      context_length=min(CONTEXT_LENGTH, model.max_positions), lens=ctx.lens, entropy_and_kl=True,
                      progress=False)


def _first(values: Any, test: Any) -> int | None:
    return next((i for i, v in enumerate(values) if test(v)), None)


def logit_lens_section(ctx: ReportContext) -> SectionResult:
    from interlayer.lens import logit_lens

    model = ctx.model
    pairs = ctx.prompts if ctx.prompts is not None else EXAMPLE_PROMPTS[: ctx.profile.prompts]
    res = logit_lens(model, [p for p, _ in pairs], targets=[t for _, t in pairs], top_k=1, lens=ctx.lens)
    rows = res.rows
    last = [int(rows.index[(rows.prompt == i)].max()) for i in range(len(pairs))]
    probs = {pairs[i][1]: res.target_probs[:, r, i].tolist() for i, r in enumerate(last)}
    ranks = {pairs[i][1]: res.target_ranks[:, r, i].tolist() for i, r in enumerate(last)}
    sample = ctx.shared("sample", lambda: sample_decoding(ctx))
    entropy = sample.entropy.mean(1).tolist()
    kl = sample.kl_to_final.mean(1).tolist()
    first_top = {t: _first(r, lambda v: v == 0) for t, r in ranks.items()}
    fig = go.Figure([go.Scatter(x=res.layers, y=p, name=plot_text(f"P({t!r}) after {pairs[i][0]!r}"),
                                mode="lines+markers")
                     for i, (t, p) in enumerate(probs.items())])
    fig.update_layout(title="Logit lens: probability of the expected next token at the last position",
                      xaxis_title="layer", yaxis={"title": "probability", "range": [0, 1]})
    curves = go.Figure([go.Scatter(x=res.layers, y=kl, name="KL(final ‖ layer), nats"),
                        go.Scatter(x=res.layers, y=entropy, name="entropy, nats", yaxis="y2")])
    curves.update_layout(title=f"Logit lens over {sample.n_tokens} tokens of sample text",
                         xaxis_title="layer", yaxis_title="KL to the final layer (nats)",
                         yaxis2={"title": "entropy (nats)", "overlaying": "y", "side": "right"})
    source = f"the prompts of {ctx.prompts_file}" if ctx.prompts is not None else "the packaged example prompts"
    prose = [f"Data: {source}."]
    for (prompt, target), layer in zip(pairs, [first_top[t] for _, t in pairs]):
        prose.append(f"After {prompt!r}, {target!r} is the top token from layer {layer} on "
                     f"(relative depth {ctx.depth(layer):.2f})." if layer is not None else
                     f"After {prompt!r}, {target!r} is never the top token at the last position.")
    below = _first(kl, lambda v: v < 1.0)
    prose.append(f"On sample text the mean KL to the final layer falls from {kl[0]:.2f} nats at layer 0 to "
                 + (f"below 1 nat at layer {below}." if below is not None else f"{kl[-2]:.2f} at the last-but-one layer."))
    numbers = {"data": source, "prompts": [p for p, _ in pairs], "targets": [t for _, t in pairs], "target_probability": probs,
               "target_rank": ranks, "first_layer_top1": first_top, "sample_tokens": sample.n_tokens,
               "sample_entropy": entropy, "sample_kl_to_final": kl}
    depth = [ctx.depth(l) for l in res.layers]
    kl_max = max(max(kl), 1e-9)
    return SectionResult(numbers, prose, [res.plot(0), fig, curves],
                         {"logit_lens_curves": pd.DataFrame({"layer": res.layers, "kl_to_final": kl, "entropy": entropy})},
                         {"logit lens: 1 - KL/KL(layer 0)": (depth, [1 - v / kl_max for v in kl])})


def saturation_section(ctx: ReportContext) -> SectionResult:
    res = ctx.shared("sample", lambda: sample_decoding(ctx))
    frame = res.to_frame()
    half = _first(frame.match_final, lambda v: v >= 0.5)
    best = int(frame.match_next.idxmax())
    median_exit = float(np.median(res.exit_layer.numpy()))
    prose = [f"Half the tokens already have their final top-1 token at layer {half} "
             f"(relative depth {ctx.depth(half):.2f})." if half is not None else
             "Fewer than half the tokens reach their final top-1 token before the last layer.",
             f"The median token exits (its top-1 stays the final one from then on) at layer {median_exit:.0f} "
             f"of {ctx.model.n_layers}.",
             f"The true next token is predicted best at layer {best}, by {frame.match_next[best]:.1%} of the tokens "
             f"({frame.match_next.iloc[-1]:.1%} at the last layer)."]
    numbers = {"tokens": res.n_tokens, "match_final": frame.match_final.tolist(), "match_next": frame.match_next.tolist(),
               "exit_fraction": frame.exit_fraction.tolist(), "half_saturated_layer": half, "median_exit_layer": median_exit}
    depth = [ctx.depth(l) for l in res.layers]
    return SectionResult(numbers, prose, [res.plot()], {"saturation": frame},
                         {"saturation: top-1 = final": (depth, frame.match_final.tolist())})


def latent_section(ctx: ReportContext) -> SectionResult:
    from interlayer.lens import latent_language

    figures, prose, numbers, tables = [], [], {}, {}
    targets = []
    for src, tgt in LATENT_PAIRS:
        res = latent_language(ctx.model, src=src, tgt=tgt, task="translation", latents=["en"],
                              limit=ctx.profile.latent_words, lens=ctx.lens, progress=False)
        payload = res.to_json()
        en, target = payload["p_latent"]["en"], payload["p_target"]
        peak = int(np.argmax(en))
        wins = _first(range(len(target)), lambda l: target[l] > en[l] and target[l] > 0.05)
        prose.append(f"{src}→{tgt} ({res.n_words} words): English peaks at layer {peak} (p = {en[peak]:.2f}); the "
                     + (f"target first beats English at layer {wins} (relative depth {ctx.depth(wins):.2f})."
                        if wins is not None else "target never beats English."))
        numbers[f"{src}-{tgt}"] = {k: payload[k] for k in ("n_words", "p_target", "p_latent", "p_source", "ci")}
        numbers[f"{src}-{tgt}"]["english_peak_layer"] = peak
        numbers[f"{src}-{tgt}"]["target_wins_layer"] = wins
        figures.append(res.plot())
        tables[f"latent_{src}_{tgt}"] = res.to_frame()
        targets.append(target)
    depth = [ctx.depth(l) for l in range(ctx.model.n_layers)]
    return SectionResult(numbers, prose, figures, tables,
                         {"latent language: P(target)": (depth, np.mean(targets, 0).tolist())})


__all__ = ["latent_section", "logit_lens_section", "model_card", "sample_decoding", "saturation_section"]
