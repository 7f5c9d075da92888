"""Sparse autoencoders on store activations: ReLU/L1, TopK, BatchTopK, JumpReLU and
top-AFA (Lee et al. 2025) as one :class:`SAE` with a pluggable activation, one trainer
(:func:`train_sae`), evaluation (:func:`evaluate_sae`), and the SAELens on-disk format
(:func:`to_saelens`, :func:`from_saelens`)."""

from . import topafa
from .activations import SAE_ARCHITECTURES
from .evaluation import SAEEvaluation, evaluate_activations, evaluate_sae
from .sae import SAE, SAEConfig, SAEOutput
from .saelens import from_saelens, to_saelens
from .sources import CachedSource, StreamedSource, TensorSource
from .training import CheckpointMismatchError, NonFiniteError, TrainOptions, TrainResult, train_sae

__all__ = ["SAE_ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput", "SAEEvaluation", "evaluate_activations", "evaluate_sae",
           "from_saelens", "to_saelens", "CachedSource", "StreamedSource", "TensorSource", "CheckpointMismatchError",
           "NonFiniteError", "TrainOptions", "TrainResult", "train_sae", "topafa"]
