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
from .summary import Panel

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

    model = ctx.model
    return saturation(model, ctx.sample_text()[0], tokens=ctx.profile.sample_tokens,
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
    prose.append(f"On {sample.n_tokens} tokens of {ctx.sample_text()[1]} the mean KL to the final layer falls from {kl[0]:.2f} nats at layer 0 to "
                 + (f"below 1 nat at layer {below}." if below is not None else f"{kl[-2]:.2f} at the last-but-one layer."))
    numbers = {"data": source, "prompts": [p for p, _ in pairs], "targets": [t for _, t in pairs], "target_probability": probs,
               "target_rank": ranks, "first_layer_top1": first_top, "sample_tokens": sample.n_tokens,
               "sample_entropy": entropy, "sample_kl_to_final": kl}
    panel = _kl_panel(ctx, sample, below)
    return SectionResult(numbers, prose, [res.plot(0), fig, curves],
                         {"logit_lens_curves": pd.DataFrame({"layer": res.layers, "kl_to_final": kl, "entropy": entropy})},
                         [panel])


def _kl_panel(ctx: ReportContext, sample: "SaturationResult", below: int | None) -> Panel:
    from interlayer.intervals import mean_interval

    per_token = sample.kl_to_final.double().numpy()  # [layers, tokens]
    low, high = mean_interval(per_token.T)
    kl = per_token.mean(1)
    sentence = (f"The logit lens's KL to the final layer falls below 1 nat at layer {below} (relative depth "
                f"{ctx.depth(below):.2f}); from there on the intermediate layers already predict what the model will."
                if below is not None else
                f"The logit lens's KL to the final layer stays above 1 nat ({kl[-2]:.2f} at the last-but-one layer).")
    return Panel("Logit lens", "KL(final ‖ layer), nats", ctx.model.n_layers, list(sample.layers), kl.tolist(),
                 low.tolist(), high.tolist(), f"95% bootstrap over {sample.n_tokens} sample-text tokens",
                 below, "first layer below 1 nat" if below is not None else "", sentence,
                 data=f"{sample.n_tokens} tokens of {ctx.sample_text()[1]}")


def saturation_section(ctx: ReportContext) -> SectionResult:
    res = ctx.shared("sample", lambda: sample_decoding(ctx))
    frame = res.to_frame()
    half = _first(frame.match_final, lambda v: v >= 0.5)
    best = int(frame.match_next.idxmax())
    median_exit = float(np.median(res.exit_layer.numpy()))
    prose = [f"Data: {res.n_tokens} tokens of {ctx.sample_text()[1]}.",
             f"Half the tokens already have their final top-1 token at layer {half} "
             f"(relative depth {ctx.depth(half):.2f})." if half is not None else
             "Fewer than half the tokens reach their final top-1 token before the last layer.",
             f"The median token exits (its top-1 stays the final one from then on) at layer {median_exit:.0f} "
             f"of {ctx.model.n_layers}.",
             f"The true next token is predicted best at layer {best}, by {frame.match_next[best]:.1%} of the tokens "
             f"({frame.match_next.iloc[-1]:.1%} at the last layer)."]
    numbers = {"tokens": res.n_tokens, "match_final": frame.match_final.tolist(), "match_next": frame.match_next.tolist(),
               "exit_fraction": frame.exit_fraction.tolist(), "half_saturated_layer": half, "median_exit_layer": median_exit}
    from interlayer.intervals import proportion_interval

    bands = [proportion_interval(round(v * res.n_tokens), res.n_tokens) for v in frame.match_final]
    sentence = (f"Half the tokens have their final top-1 token by layer {half} (relative depth {ctx.depth(half):.2f})."
                if half is not None else "Fewer than half the tokens have their final top-1 token before the last layer.")
    panel = Panel("Saturation", "fraction of tokens whose top-1 is the final one", ctx.model.n_layers, list(res.layers),
                  frame.match_final.tolist(), [b[0] for b in bands], [b[1] for b in bands],
                  f"95% Wilson over {res.n_tokens} tokens", half, "half the tokens saturated" if half is not None else "",
                  sentence, data=f"{res.n_tokens} tokens of {ctx.sample_text()[1]}")
    return SectionResult(numbers, prose, [res.plot()], {"saturation": frame}, [panel])


def latent_section(ctx: ReportContext) -> SectionResult:
    from interlayer.lens import latent_language

    figures, prose, numbers, tables = [], [], {}, {}
    pairs, words = LATENT_PAIRS, None
    if ctx.word_pairs is not None:
        pairs, words = [ctx.word_pairs[:2]], ctx.word_pairs[2]
    source = (f"the word pairs of {ctx.word_pairs_file}" if words is not None
              else "the packaged word list (Wendler et al. 2024)")
    prose.append(f"Data: {source}.")
    results = []
    for src, tgt in pairs:
        res = latent_language(ctx.model, src=src, tgt=tgt, task="translation", latents=["en"], words=words,
                              limit=ctx.profile.latent_words, lens=ctx.lens, progress=False)
        payload = res.to_json()
        en, target = payload["p_latent"]["en"], payload["p_target"]
        peak = int(np.argmax(en))
        wins = _first(range(len(target)), lambda l: target[l] > en[l] and target[l] > 0.05)
        prose.append(f"{src}→{tgt} ({res.n_words} words): English peaks at layer {peak} (P = {en[peak]:.2f}); the "
                     + (f"target first beats English at layer {wins} (relative depth {ctx.depth(wins):.2f})."
                        if wins is not None else "target never beats English."))
        numbers[f"{src}-{tgt}"] = {k: payload[k] for k in ("n_words", "p_target", "p_latent", "p_source", "ci")}
        numbers[f"{src}-{tgt}"]["english_peak_layer"] = peak
        numbers[f"{src}-{tgt}"]["target_wins_layer"] = wins
        figures.append(res.plot())
        tables[f"latent_{src}_{tgt}"] = res.to_frame()
        results.append(payload)
    numbers["data"] = source
    return SectionResult(numbers, prose, figures, tables, [_latent_panel(ctx, results, pairs, source)])


def _latent_panel(ctx: ReportContext, results: list[dict[str, Any]], pairs: Any, source: str) -> Panel:
    """P(target) averaged over the pairs, its interval the average of the pairs' bounds; the
    marked layer is the first where the averaged target beats the averaged source word."""
    target = np.mean([r["p_target"] for r in results], 0)
    src = np.mean([r["p_source"] for r in results], 0)
    english = np.mean([r["p_latent"]["en"] for r in results], 0)
    low = np.mean([r["ci"]["p_target"]["low"] for r in results], 0)
    high = np.mean([r["ci"]["p_target"]["high"] for r in results], 0)
    wins = _first(range(len(target)), lambda l: target[l] > src[l] and target[l] > 0.05)
    names = ", ".join(f"{a}→{b}" for a, b in pairs)
    peak = int(np.argmax(english))
    sentence = (f"In translation ({names}) the target word first beats the source word at layer {wins} (relative depth "
                f"{ctx.depth(wins):.2f}); English, the latent language, peaks at layer {peak} (P = {english[peak]:.2f})."
                if wins is not None else f"In translation ({names}) the target word never beats the source word; "
                f"English peaks at layer {peak} (P = {english[peak]:.2f}).")
    interval = ("95% bootstrap over words" + (", the average of the pairs' bounds" if len(results) > 1 else ""))
    return Panel("Latent language", f"P(target word), mean of {names}", ctx.model.n_layers,
                 list(results[0]["layers"]), target.tolist(), low.tolist(), high.tolist(), interval, wins,
                 "target first beats the source" if wins is not None else "", sentence, data=source)


__all__ = ["latent_section", "logit_lens_section", "model_card", "sample_decoding", "saturation_section"]
