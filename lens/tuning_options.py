"""The training options of a tuned lens (:func:`interlayer.lens.tune_lens`), one option
group shared by the ``lens tune`` command and the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from interlayer.options import Options, layer_spec, option


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
