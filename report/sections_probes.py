"""Report sections on what the layers encode: MEXA cross-lingual alignment and a
language-identity probe (both from one store pass over FLORES), and internal
consistency."""

from __future__ import annotations

from typing import Any

import numpy as np

from interlayer.layers import hidden_index_layers

from .base import ReportContext, SectionResult
from .summary import Panel

PIVOT = "eng_Latn"


def flores_embeddings(ctx: ReportContext) -> dict[str, Any]:
    """One store pass over FLORES: position-weighted sentence embeddings at every hidden
    state for the pivot and ``mexa_languages`` other languages."""
    from interlayer.probes.mexa import available_languages, load_parallel, sentence_embeddings

    langs = [l for l in available_languages() if l != PIVOT][: ctx.profile.mexa_languages]
    n = ctx.profile.mexa_sentences
    data = load_parallel([PIVOT, *langs], n)
    sentences = [s for lang in (PIVOT, *langs) for s in data[lang]]
    emb = sentence_embeddings(ctx.model, sentences, "weighted", batch_size=16, progress=False)
    per_lang = {lang: emb[:, i * n:(i + 1) * n] for i, lang in enumerate((PIVOT, *langs))}
    return {"langs": langs, "n": n, "embeddings": per_lang}


def mexa_section(ctx: ReportContext) -> SectionResult:
    from interlayer.probes.mexa import MexaResult, alignment_scores

    flores = ctx.shared("flores", lambda: flores_embeddings(ctx))
    pivot = flores["embeddings"][PIVOT]
    scores = {lang: alignment_scores(pivot, flores["embeddings"][lang]) for lang in flores["langs"]}
    res = MexaResult(ctx.model.name, "weighted", flores["n"], PIVOT, int(pivot.shape[0]), scores)
    mean_by_layer = np.mean([scores[l] for l in scores], 0)
    peak = int(np.argmax(mean_by_layer))
    summary = res.summary()
    hidden = int(pivot.shape[0]) - 1
    prose = [f"Averaged over {len(scores)} languages, alignment with English peaks at hidden state {peak} of {hidden} "
             f"(relative depth {peak / hidden:.2f}) at {mean_by_layer[peak]:.2f}.",
             f"Best aligned: {summary.language[0]} (mean {summary['mean'][0]:.2f}, max {summary['max'][0]:.2f}); "
             f"least: {summary.language.iloc[-1]} (mean {summary['mean'].iloc[-1]:.2f}).",
             f"Over all languages and layers the mean score is {float(np.mean(mean_by_layer)):.2f}."]
    source = f"FLORES-200 devtest, {len(scores)} languages and English x {flores['n']} sentences"
    prose.insert(0, f"Data: {source}.")
    numbers = {**res.to_json(), "mean_by_layer": mean_by_layer.tolist(), "peak_hidden_state": peak, "data": source}
    from interlayer.intervals import mean_interval

    low, high = mean_interval(np.array([scores[l] for l in scores]), bounds=(0.0, 1.0))
    best = res.layers[peak]  # hidden state i is block i - 1's output
    sentence = (f"Sentences align best with their English translations at {_layer(best)} (relative depth "
                f"{ctx.depth(best):.2f}; mean MEXA {mean_by_layer[peak]:.2f} over {len(scores)} languages).")
    panel = Panel("MEXA", "alignment with English (mean over languages)", ctx.model.n_layers, list(res.layers),
                  mean_by_layer.tolist(), low.tolist(), high.tolist(), f"95% bootstrap over {len(scores)} languages",
                  best, "best aligned layer", sentence, data=source)
    return SectionResult(numbers, prose, [res.plot(), res.plot_summary()], {"mexa": res.to_frame(), "mexa_summary": summary},
                         [panel])


def _layer(layer: int | None) -> str:
    return "the embeddings" if layer is None else f"layer {layer}"


def probes_section(ctx: ReportContext) -> SectionResult:
    from interlayer.probes import probe_features

    flores = ctx.shared("flores", lambda: flores_embeddings(ctx))
    langs = [PIVOT, *flores["langs"]]
    features = {f"hidden.{i}": np.concatenate([flores["embeddings"][l][i].numpy() for l in langs])
                for i in range(flores["embeddings"][PIVOT].shape[0])}
    import torch

    labels = [l for l in langs for _ in range(flores["n"])]
    res = probe_features({k: torch.from_numpy(v) for k, v in features.items()}, labels, folds=ctx.profile.probe_folds)
    frame = res.to_frame()
    best = int(frame.accuracy.idxmax())
    sel = int(np.argmax(res.selectivity))
    prose = [f"A linear probe tells the {len(langs)} languages apart with {frame.accuracy[best]:.1%} accuracy at "
             f"{frame.site[best]} ({res.folds}-fold cross-validation, chance {res.chance:.1%}).",
             f"The control (the same probe on shuffled labels) reaches at most {max(res.control):.1%}; selectivity "
             f"peaks at {frame.site[sel]} ({res.selectivity[sel]:.2f}).",
             f"At the embeddings (hidden.0) the accuracy is already {frame.accuracy[0]:.1%}: language identity is "
             "largely lexical."]
    numbers = {"task": "language identity", "languages": langs, "sentences_per_language": flores["n"],
               "accuracy": res.accuracy, "ci_low": res.ci_low, "ci_high": res.ci_high, "control": res.control,
               "chance": res.chance, "folds": res.folds, "best_site": frame.site[best]}
    layers = hidden_index_layers(len(res.sites))
    above = next((i for i, low in enumerate(res.ci_low) if low > res.chance), None)
    first = layers[above] if above is not None else None
    sentence = (f"A linear probe tells the {len(langs)} languages apart above chance from {_layer(first)} on "
                f"({frame.accuracy[above]:.1%} there, chance {res.chance:.1%}); its best is {frame.accuracy[best]:.1%}."
                if above is not None else f"No layer's probe is above chance ({res.chance:.1%}) on these languages.")
    source = f"FLORES-200 devtest, {len(langs)} languages x {flores['n']} sentences"
    numbers["data"] = source
    prose.insert(0, f"Data: {source}.")
    panel = Panel("Probe: language identity", "accuracy (cross-validated)", ctx.model.n_layers, layers,
                  list(res.accuracy), [max(0.0, v) for v in res.ci_low], [min(1.0, v) for v in res.ci_high],
                  f"95% Wilson over {len(labels)} sentences", first, "first layer above chance" if above is not None else "",
                  sentence, reference=res.chance, reference_label="chance", data=source)
    return SectionResult(numbers, prose, [res.plot()], {"probe_language_identity": frame}, [panel])


def consistency_section(ctx: ReportContext) -> SectionResult:
    from interlayer.probes.consistency import LABELS, internal_consistency, load_examples

    p = ctx.profile
    examples = load_examples("coinflip", p.consistency_questions)
    res = internal_consistency(ctx.model, examples, LABELS["coinflip"], paths=p.consistency_paths, dataset="coinflip",
                               max_new_tokens=p.consistency_tokens, lens=ctx.lens, progress=False)
    payload = res.to_json()
    auroc = payload["auroc"]
    agree = np.array(res.agreement_correct)
    peak = int(np.nanargmax(agree)) if np.isfinite(agree).any() else None
    prose = [f"On {res.n} coin-flip questions with {res.paths} sampled reasoning paths each, greedy accuracy is "
             f"{res.greedy_accuracy:.1%}, self-consistency {res.sc_accuracy[-1]:.1%} and IC-weighted voting "
             f"{res.ic_accuracy[-1]:.1%}.",
             (f"Internal consistency separates correct from incorrect paths with AUROC {auroc:.2f}." if auroc is not None
              else "AUROC is undefined here: every sampled path was right, or every one wrong.")]
    if peak is not None:
        prose.append(f"Latent predictions agree most with the final answer at layer {peak} "
                     f"({agree[peak]:.1%} for correct paths).")
    source = f"CoinFlip, {res.n} questions x {res.paths} sampled paths"
    prose.insert(0, f"Data: {source}.")
    if res.n < 20:
        prose.append(f"With {res.n} questions these numbers are a smoke test, not a measurement: the intervals are wide.")
    numbers = {k: v for k, v in payload.items() if k not in ("ic", "correct", "texts")}  # per-path data stay out
    numbers["data"] = source
    panels = []
    if agree.size and np.isfinite(agree).all():
        ci = res.agreement_correct_ci
        mark = res.layers[peak]
        sentence = (f"On correct reasoning paths the latent answer agrees most with the final one at {_layer(mark)} "
                    f"({agree[peak]:.1%}; AUROC of internal consistency "
                    + (f"{auroc:.2f})." if auroc is not None else "undefined)."))
        panels.append(Panel("Internal consistency", "agreement with the answer (correct paths)", ctx.model.n_layers,
                            list(res.layers[:agree.size]), agree.tolist(), None if ci is None else list(ci[0]),
                            None if ci is None else list(ci[1]), "95% bootstrap over correct sampled paths", mark,
                            "most agreement", sentence, data=source))
    return SectionResult(numbers, prose, [res.plot()], {"consistency": res.to_frame()}, panels)


__all__ = ["consistency_section", "flores_embeddings", "mexa_section", "probes_section"]
