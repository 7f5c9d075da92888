"""Configs of the ``interlayer sae`` commands, shared by the CLI and the Python API,
composed from the shared option groups (:class:`~interlayer.model.options.ModelOptions`,
:class:`~interlayer.options.RunOptions`, :class:`~interlayer.options.TextOptions`) and the
trainer's :class:`~interlayer.saes.options.TrainOptions`. Only :mod:`~interlayer.saes.runs`
reads them; the library takes typed arguments."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.model.options import ModelOptions
from interlayer.options import (Options, PassOptions, RunOptions, TextOptions, data_option, figures_option, option,
                                out_option, text_field_option)
from interlayer.distributed import DEFAULT_TIMEOUT_S
from interlayer.model.sites import one_site, site_list

from .archs import AFA_FORMS, DEFAULT_K, SAE_ARCHITECTURES, architecture
from .archs.jumprelu import INITIAL_THRESHOLD
from .normalization import NORMALIZATIONS
from .training import TrainOptions


LATENTS_PER_D_MODEL = 8
"""The default number of latents of ``sae train`` and ``sae sweep``: 8 x d_model (5,120 on
Gemma 3 270M, the size of the README's sweep)."""


def jumprelu_threshold_option() -> float:
    """The ``--jumprelu-threshold`` option of ``sae train`` and ``sae sweep``."""
    return option(INITIAL_THRESHOLD, "initial JumpReLU threshold theta (Rajamanoharan et al. 2024: 0.001); "
                                     "log(theta) moves about lr per step, so in short runs it sets the L0", above=0)


@dataclass
class SAETrainConfig(RunOptions, ModelOptions, TrainOptions):
    """Train a sparse autoencoder on one hook site (streamed from --data, or from cached --activations)."""

    data: str | None = data_option("training text, streamed through the model: a .txt (one document per line), "
                                   ".jsonl or .parquet file, or a folder of them")
    text_field: str = text_field_option("--data and --eval-data")
    activations: str | None = option(None, "a directory written by `interlayer cache` (instead of --data)", group="data")
    site: str = option("resid_post.6", "the hook site the SAE reads, e.g. resid_post.6", parse=one_site, group="data")
    sites: str | None = option(None, "train one SAE per site, all at once (one model pass or cache read per batch; "
                                     "spread over the ranks under torchrun): comma-separated names or wildcards such "
                                     "as resid_post.*; each SAE goes to <out>/<site>/ (replaces --site)",
                               parse=site_list, group="data")
    arch: str = option("topk", "SAE architecture (TopK dominates top-AFA in the README's sweep)",
                       choices=SAE_ARCHITECTURES)
    latents: int | None = option(None, f"number of latents h (default: {LATENTS_PER_D_MODEL} x d_model)", min=1)
    k: int | None = option(None, f"latents per token (topk; the batch mean for batchtopk; default: {DEFAULT_K} for "
                                 "those two)", min=1)
    afa_form: str | None = option(None, "top-AFA's AFA loss: 'centred' (||f|| -> ||x - b_dec||, b_dec from the data "
                                        "mean; the default) or 'authors' (||f|| -> ||x||, b_dec from zeros)",
                                  choices=AFA_FORMS)
    authors_exact: bool = option(False, "top-AFA exactly as its authors' code: no b_enc, k = h excluded, constant lr, "
                                        "AuxK residual not detached, decoder renormalised before the step")
    jumprelu_threshold: float = jumprelu_threshold_option()
    """Becomes the SAE's :attr:`~interlayer.saes.SAEConfig.jumprelu_init_threshold`."""
    out: str = out_option("output directory: sae.safetensors, cfg.json, metrics.json, history.csv, figures.html "
                          "(a run there is resumed)", required=True)
    normalization: str = option("standardize", "input normalisation", choices=NORMALIZATIONS)
    context_length: int = option(128, "tokens per packed context when streaming, BOS included", min=2)
    forward_batch_size: int = option(8, "sequences (packed contexts) per model forward pass when streaming", min=1,
                                     flag="--batch-size", group="method")
    memory_mb: float = option(256.0, "activation chunk size when streaming, MiB", above=0)
    eval_data: str | None = option(None, "text for the final evaluation (default: --data, else the packaged sample)")
    eval_tokens: int = option(8192, "tokens of the final evaluation", min=1)
    no_progress: bool = RunOptions.variant("no_progress", help="hide the progress bars")
    dist_timeout: float = option(DEFAULT_TIMEOUT_S, "under torchrun: seconds a rank waits at a collective before "
                                                    "every rank stops", above=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k is None and architecture(self.arch).takes_k:
            self.k = architecture(self.arch).default_k


@dataclass
class SAEEvalConfig(RunOptions, TextOptions, ModelOptions):
    """Evaluate a saved SAE: reconstruction, sparsity, eps_LBO, and CE loss recovered when spliced in."""

    sae: str = option(None, "directory of a saved SAE (sae.safetensors + cfg.json), or of a SAELens SAE", required=True)
    data: str | None = TextOptions.variant("data", help="evaluation text: a .txt, .jsonl or .parquet file, or a folder "
                                                        "of them (default: the packaged sample)")
    site: str | None = option(None, "hook site (default: the one in the SAE's config)", parse=one_site, group="data")
    tokens: int = TextOptions.variant("tokens", 8192, "evaluation tokens")
    batch_size: int = PassOptions.variant("batch_size", 2)
    out: str = out_option("write the metrics and the whole evaluation (SAEEvaluation.load reads it) here",
                          required=True, suffixes=(".json",))
    figures: str | None = figures_option("the ZF plot, eps_LBO and firing histograms")


@dataclass
class SAECheckConfig(RunOptions, ModelOptions):
    """Load an SAE of any format and check it on held-out tokens of the model: L0, explained
    variance, NMSE, CE loss recovered and KL; refused (non-zero exit) when worse than zero-ablation."""

    sae: str = option(None, "the SAE: a file or folder in any format `interlayer.saes.sae_formats()` names",
                      required=True, group="data")
    site: str | None = option(None, "the site it is for (any naming; narrows a repository of several SAEs)",
                              parse=one_site, group="data")
    data: str | None = data_option("held-out text: a .txt, .jsonl or .parquet file, or a folder of them "
                                   "(default: the packaged sample)")
    text_field: str = text_field_option("--data")
    tokens: int = option(512, "held-out tokens", min=1)
    context_length: int = option(64, "tokens per packed context, BOS included", min=2)
    allow_model_mismatch: bool = option(False, "accept an SAE whose files name another model")
    out: str | None = out_option("also write the check (SAECheck.load reads it) to this .json file",
                                 suffixes=(".json",))


@dataclass
class SAEExportConfig(Options):
    """Convert a saved SAE to the SAELens on-disk format, or a SAELens SAE to ours."""

    sae: str = option(None, "directory of the SAE to convert", required=True, group="data")
    to: str = option("saelens", "target format", choices=("saelens", "interlayer"))
    out: str = out_option("output directory", required=True)


@dataclass
class SAESweepConfig(RunOptions, ModelOptions, TrainOptions):
    """Train a grid of SAEs on the same cached activations and compare them: L0 against explained variance, NMSE and CE loss recovered."""

    activations: str = option(None, "a directory written by `interlayer cache` (read once per step for every member)",
                              required=True, group="data")
    site: str | None = option(None, "the cached site to train on (default: the cache's only site)", parse=one_site,
                              group="data")
    arch: str = option("topk,batchtopk,jumprelu,relu,topafa", "architectures to sweep, comma-separated", items=str)
    grid: str | None = option(None, "values per architecture, e.g. 'topk=16,32;relu=0.003;topafa=authors:1/32,centred:1/64' "
                                    "(default: the documented grid)")
    latents: int | None = option(None, f"latents per SAE (default: {LATENTS_PER_D_MODEL} x d_model)", min=1)
    normalization: str = option("standardize", "input normalisation", choices=NORMALIZATIONS)
    jumprelu_threshold: float = jumprelu_threshold_option()
    """Becomes the SAE's :attr:`~interlayer.saes.SAEConfig.jumprelu_init_threshold`."""
    eval_data: str | None = option(None, "held-out text for the evaluation: a .txt, .jsonl or .parquet file, or a "
                                         "folder of them (default: the packaged sample)")
    text_field: str = text_field_option("--eval-data")
    eval_tokens: int = option(8192, "evaluation tokens", min=1)
    context_length: int = option(128, "tokens per evaluation context, BOS included", min=2)
    eval_batch_size: int = option(8, "evaluation sequences (contexts) per forward pass", min=1, flag="--batch-size",
                                  group="method")
    members_per_pass: int = option(0, "members trained together on each batch (0: as many as --train-memory-mb allows)",
                                   min=0)
    train_memory_mb: float = option(8192.0, "memory for the weights and Adam state of the members trained together, MiB",
                                    above=0)
    out: str = out_option("sweep directory: one subdirectory per member, pareto.csv, pareto.html, sweep.json "
                          "(finished members are reused)", required=True)
    no_progress: bool = RunOptions.variant("no_progress", help="hide the progress bars")
