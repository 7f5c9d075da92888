"""Report sections on what the layers encode: MEXA cross-lingual alignment and a
language-identity probe (both from one store pass over FLORES), and internal
consistency."""

from __future__ import annotations

from typing import Any

import numpy as np

from interlayer.layers import hidden_index_layers

from .base import ReportContext, SectionResult

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
    numbers = {**res.to_json(), "mean_by_layer": mean_by_layer.tolist(), "peak_hidden_state": peak}
    depth = [ctx.depth(layer) for layer in res.layers]  # hidden state i at i / L
    return SectionResult(numbers, prose, [res.plot(), res.plot_summary()], {"mexa": res.to_frame(), "mexa_summary": summary},
                         {"MEXA: mean alignment": (depth, mean_by_layer.tolist())})


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
    hidden = len(res.sites) - 1
    return SectionResult(numbers, prose, [res.plot()], {"probe_language_identity": frame},
                         {"probe: language identity": ([ctx.depth(layer) for layer in hidden_index_layers(hidden + 1)],
                                                       res.accuracy)})


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
    layers = len(res.agreement_correct)
    curve = {}
    if layers and np.isfinite(agree).all():
        curve = {"consistency: agreement (correct paths)": ([ctx.depth(layer) for layer in res.layers[:layers]],
                                                             agree.tolist())}
    numbers = {k: v for k, v in payload.items() if k not in ("ic", "correct", "texts")}  # per-path data stay out
    return SectionResult(numbers, prose, [res.plot()], {"consistency": res.to_frame()}, curve)


__all__ = ["consistency_section", "flores_embeddings", "mexa_section", "probes_section"]
