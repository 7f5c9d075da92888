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
    profile: str = option("quick", "quick (minutes on a CPU) or full (the README findings' sizes)",
                          choices=("quick", "full"))
