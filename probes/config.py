"""Configs of the probes commands, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.cli.config import chat_option
from interlayer.lens.config import LensOptions
from interlayer.model.options import ModelOptions
from interlayer.model.sites import site_list
from interlayer.options import PassOptions, RunOptions, figures_option, option, out_option, str_list, words_or
from interlayer.prompts import ChatMode


@dataclass
class MexaConfig(RunOptions, ModelOptions):
    """MEXA: cross-lingual alignment of each layer's sentence embeddings with English."""

    dataset: str | None = option(None, "a folder of parallel <lang>.devtest or <lang>.txt files "
                                       "(default: the packaged FLORES-200 subset)")
    langs: str = option("all", "comma-separated languages (e.g. fra_Latn,deu_Latn) or 'all' shipped/found",
                        group="data", parse=words_or(("all",), str_list))
    pivot: str = option("eng_Latn", "the pivot language every other one is aligned with")
    n: int = option(100, "parallel sentences per language (the first n lines)", min=1)
    pooling: str = option("weighted", "sentence embedding: position-weighted mean or last token", choices=("weighted", "last"))
    batch_size: int = PassOptions.variant("batch_size", 16, "sentences per forward pass")
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the alignment per layer and language")


@dataclass
class ConsistencyConfig(RunOptions, LensOptions, ModelOptions):
    """Internal consistency of chain-of-thought answers across layers (Xie et al. 2024)."""

    dataset: str = option("coinflip", "packaged dataset", choices=("coinflip", "prontoqa", "proofwriter", "boolq"))
    n: int = option(20, "questions (the first n of the dataset)", min=2)
    chat: ChatMode = chat_option()
    paths: int = option(5, "sampled chain-of-thought paths per question (temperature 0.7, top-p 0.95)", min=1)
    max_new_tokens: int = option(96, "tokens per sampled path", min=1)
    seed: int = option(0, "sampling seed")
    out: str | None = out_option("write the result JSON here (sampled paths are journalled to OUT.paths.jsonl; "
                                 "a rerun resumes)", suffixes=(".json",))
    figures: str | None = figures_option("the consistency per layer")


@dataclass
class LinearProbeConfig(RunOptions, ModelOptions):
    """Linear probes per layer with a shuffled-label control task (Hewitt & Liang 2019)."""

    dataset: str = option(None, "a labelled records file: .jsonl, .json, .csv or .parquet with a text and a label "
                                "per record", required=True)
    text_field: str = option("text", "the field (column) holding each record's text", group="data")
    label_field: str = option("label", "the field (column) holding each record's label")
    n: int | None = option(None, "use the first n records (default: all)", min=2)
    sites: str = option("resid_post.*", "comma-separated sites or wildcards to probe", parse=site_list, group="data")
    select: str = option("weighted_mean", "one vector per text: position-weighted mean, mean, or last token",
                         choices=("weighted_mean", "mean", "last"))
    folds: int = option(5, "cross-validation folds", min=2)
    seed: int = option(0, "seed of the folds and of the control task's shuffled labels")
    batch_size: int = PassOptions.variant("batch_size", 16, "texts per forward pass")
    out: str | None = out_option("write the per-site table as .csv, "
                                 "or the whole result as .json (ProbeResult.load reads it)",
                                 suffixes=(".csv", ".json"))
    figures: str | None = figures_option("the accuracy, control and chance per site")
