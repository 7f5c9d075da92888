"""Sparse autoencoders on store activations: ReLU/L1, TopK, BatchTopK, JumpReLU and
top-AFA (Lee et al. 2025) as one :class:`SAE` with a pluggable activation, one trainer,
evaluation, and SAELens import/export."""

from .activations import ARCHITECTURES
from .sae import SAE, SAEConfig, SAEOutput

__all__ = ["ARCHITECTURES", "SAE", "SAEConfig", "SAEOutput"]
