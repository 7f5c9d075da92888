"""The config of ``interlayer report``, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.lens.config import LensOptions
from interlayer.model.options import ModelOptions
from interlayer.options import RunOptions, option


@dataclass
class ReportConfig(RunOptions, LensOptions, ModelOptions):
    """One self-contained, layer-wise HTML report of a model: every method, one page."""

    out: str = option("report.html", "the HTML file NAME.html; NAME.json (the numbers), NAME.tables/*.csv and "
                      "NAME.parts/ (to resume) go next to it, and a file there the report did not write is refused",
                      suffixes=(".html",), short="-o", group="output")
    only: str | None = option(None, "comma-separated sections to run (default: all)", group="method")
    skip: str | None = option(None, "comma-separated sections to leave out")
    sae: str | None = option(None, "an SAE in any format interlayer loads (checked on held-out tokens first): "
                                   "adds the SAE panel")
    facts: str | None = option(None, "causal tracing's facts: a .jsonl file with one {\"prompt\", \"subject\", "
                                     "\"target\"} object per line (default: the packaged known_1000)", group="data",
                               suffixes=(".jsonl",))
    prompts: str | None = option(None, "the logit lens's prompts: a .jsonl file with one {\"prompt\", \"target\"} "
                                       "object per line (default: three packaged examples)", suffixes=(".jsonl",))
    word_pairs: str | None = option(None, "latent language's words: a .jsonl file with one {\"<source>\": word, "
                                          "\"<target>\": word, \"en\": word} object per line (default: the packaged "
                                          "fr-zh, de-ja and ru-fr pairs)", suffixes=(".jsonl",))
    steering_dataset: str | None = option(None, "the steering section's contrast pairs: a dataset name (caa:..., "
                                                "persona:..., power-seeking) or a .json/.jsonl file of "
                                                "{question, answer_matching_behavior, answer_not_matching_behavior} "
                                                "(default: persona:agreeableness)")
    qa_data: str | None = option(None, "the IKS section's questions: nq, squad, known or a .json/.jsonl QA records "
                                       "file (default: nq)")
    text: str | None = option(None, "sample text for the logit-lens curves, saturation and the SAE panel: a .txt file "
                                    "or .jsonl records with a text field (default: the packaged sample text)")
    static_figures: str | None = option(None, "also write every figure as an image into NAME.figures/: png, svg or "
                                              "png,svg (kaleido, else a headless chromium)", group="output")
    profile: str = option("quick", "quick (minutes on a CPU) or full (the README findings' sizes)",
                          choices=("quick", "full"))

    def user_data(self) -> dict[str, str]:
        """The user-data options given, by :data:`~interlayer.report.build.USER_DATA` keyword."""
        names = ("prompts", "word_pairs", "facts", "steering_dataset", "qa_data", "text")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass
class CompareConfig(RunOptions):
    """Two or more finished reports side by side: interlayer report compare A.json B.json."""

    reports: list[str] | None = option(None, "a report's NAME.json (or NAME.html)", flag="--report", repeat=True,
                                       positional=True, group="data")
    out: str = option("compare.html", "the comparison page; NAME.json (each model's layers of interest) goes next "
                      "to it", suffixes=(".html",), short="-o", group="output")
