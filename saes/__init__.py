"""Sparse autoencoders on store activations: ReLU/L1, TopK, BatchTopK, JumpReLU and
top-AFA (Lee et al. 2025, in its authors' and a centred form, and an authors-exact mode)
as one :class:`SAE` with a pluggable activation (one module per architecture under
:mod:`interlayer.saes.archs`), one trainer (:func:`train_sae`; several
SAEs on one pass with :func:`train_saes`), evaluation (:func:`evaluate_sae`,
:func:`evaluate_saes`), Pareto sweeps (:mod:`interlayer.saes.sweep`), and the SAELens
on-disk format (:func:`to_saelens`, :func:`from_saelens`); every other format through
:func:`load` (:mod:`interlayer.saes.formats`), sparsify written by :func:`to_sparsify`."""

from . import topafa
from .archs import AFA_FORMS, SAE_ARCHITECTURES
from .contexts import top_contexts
from .evaluation import SAEEvaluation, evaluate_activations, evaluate_sae, evaluate_saes
from .sae import SAE, SAEConfig, SAEOutput
from .saelens import from_saelens, to_saelens
from .sources import CachedSource, StreamedSource, TensorSource
from .pareto import SAESweep, SAESweepResult
from .records import EvalOptions, TrainedSAE, finish_sae, finish_saes
from .run import SweepSpec, plan_sweep, sweep_saes
from .saelens import load_sae
from .loading import list_saes, load, sae_formats
from .identity import SAEMismatchError
from .formats import SAEFormatError
from .formats.sparsify import to_sparsify
from .sources import Placement, Source
from .sweep import run_sweep
from .training import (CheckpointMismatchError, NonFiniteError, TrainMember, TrainOptions, TrainResult, train_sae,
                       train_saes)

__all__ = ["SAE_ARCHITECTURES", "AFA_FORMS", "SAE", "SAEConfig", "SAEOutput", "SAEEvaluation", "evaluate_activations",
           "evaluate_sae", "evaluate_saes", "from_saelens", "to_saelens", "CachedSource", "StreamedSource",
           "TensorSource", "CheckpointMismatchError", "NonFiniteError", "TrainMember", "TrainOptions", "TrainResult",
           "train_sae", "train_saes", "topafa", "SAESweepResult", "run_sweep", "top_contexts", "SAESweep", "load_sae",
           "Source", "Placement", "EvalOptions", "TrainedSAE", "finish_sae", "finish_saes", "SweepSpec", "plan_sweep",
           "sweep_saes", "load", "sae_formats", "list_saes", "SAEMismatchError", "SAEFormatError", "to_sparsify"]
