"""The training options of a tuned lens (:func:`interlayer.lens.tune_lens`) and the fitting
options of a Jacobian lens (:func:`interlayer.lens.fit_jacobian_lens`): option groups shared
by the ``lens tune`` and ``lens jacobian`` commands and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.model.options import ModelOptions
from interlayer.options import Options, RunOptions, TextOptions, layer_spec, option, out_option


@dataclass
class TuneOptions(Options):
    """How a tuned lens is trained: which layers, how many steps of how many tokens, the
    learning-rate schedule, the seed of the row order and the checkpoint interval."""

    layers: str = option("all", "layers to train: 'all' (every layer but the last), or indices and ranges such as "
                                "0-8,-2 (negative: from the end)", parse=layer_spec, group="method")
    steps: int = option(300, "optimizer steps", min=1)
    batch_size: int = option(32, "training tokens per optimizer step", min=1, flag="--tokens-per-step",
                             group="training")
    lr: float = option(3e-4, "Adam learning rate (after linear warmup, decays linearly to 0)", above=0)
    warmup: int = option(20, "linear learning-rate warmup steps", min=0, flag="--warmup-steps", group="training")
    seed: int = option(0, "seed of the row order", group="training")
    checkpoint_every: int = option(50, "write a resumable checkpoint every N steps (0: never)", min=0)


@dataclass
class JacobianOptions(Options):
    """How a Jacobian lens is fitted (:func:`interlayer.lens.fit_jacobian_lens`): which source
    layers, how many leading positions of each context to leave out, and how many contexts
    each store pass (one graph, ``d_model`` backward passes, one checkpoint) holds."""

    layers: str = option("all", "source layers: 'all' (every layer but the last), or indices and ranges such as "
                                "0-8,-2 (negative: from the end)", parse=layer_spec, group="method")
    skip_first: int = option(16, "leading positions of each context left out as sources and targets (BOS and "
                                 "attention sinks; TransformerLens's skip_first_positions)", min=0, group="method")
    batch_size: int = option(4, "contexts per pass: bounds memory (one pass's autograd graph) and sets the "
                                "checkpoint interval", min=1, flag="--contexts-per-pass", group="training")


@dataclass
class JacobianConfig(JacobianOptions, RunOptions, TextOptions, ModelOptions):
    """Fit a Jacobian lens (one average Jacobian per layer) on the model's own passes."""

    out: str | None = out_option("directory for lens.pt and convergence.csv (and the checkpoint while it fits)",
                                 required=True)
    tokens: int = TextOptions.variant("tokens", 2048, "tokens to fit on, taken from the start of --data "
                                                      "(full contexts only)")
