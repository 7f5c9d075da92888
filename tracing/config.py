"""The config of ``interlayer trace``, shared by the CLI and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.model.options import ModelOptions
from interlayer.options import RunOptions, figures_option, option, out_option, str_list


@dataclass
class TraceConfig(RunOptions, ModelOptions):
    """Causal tracing of factual recall (Meng et al. 2022): which states restore the answer."""

    facts: str | None = option(None, "a .jsonl file of facts, one {\"prompt\", \"subject\", \"target\"} object per "
                                     "line (default: the packaged known_1000)", group="data", suffixes=(".jsonl",))
    n: int = option(20, "facts to trace (the first n the model knows, or the first n with --all-facts)", min=1)
    all_facts: bool = option(False, "trace facts the model does not know too (ROME's code keeps only known ones)")
    kinds: str = option("resid,mlp,attn", "states to restore: resid (block outputs), mlp and attn (outputs over a "
                                          "window of layers)", parse=str_list)
    window: int = option(10, "layers restored together for mlp and attn (ROME: 10)", min=1)
    noise: float = option(3.0, "the noise's standard deviation in multiples of the subjects' embedding std (ROME: 3)",
                          above=0)
    samples: int = option(10, "noise samples per fact (ROME: 10)", min=1)
    seed: int = option(0, "the noise's seed")
    positions: str = option("all", "positions to restore: all (ROME) or key (the first and last subject token and the "
                                   "last token: fewer passes)", choices=("all", "key"))
    out: str | None = out_option("write the result JSON here", suffixes=(".json",))
    figures: str | None = figures_option("the average indirect effect heatmaps")
