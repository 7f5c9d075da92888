"""The SAE architectures, one module each: its activation, config defaults, sparsity
loss and coefficients, registered in :data:`~interlayer.saes.archs.base.REGISTRY`.

A new architecture is one new file that calls :func:`register`, plus its import line
below (or, outside the package, a call to :func:`register` before the SAE is built).
"""

# the registry: one line per architecture (importing a module registers it)
from . import relu
from . import topk
from . import batchtopk
from . import jumprelu
from . import topafa
from .base import (REGISTRY, SPARSE_DENSITY, Activation, ArchConfig, ArchFields, Architecture, Code, EncodeContext, architecture, coo_code,
                   dense_code, register)
from .batchtopk import BatchTopK
from .jumprelu import JumpReLU
from .relu import ReLU
from .topafa import AFA_FORMS, TopAFA, candidates_for
from .topk import DEFAULT_K, TopK

SAE_ARCHITECTURES = tuple(REGISTRY)
"""The built-in SAE architectures, by ``--arch`` name."""
# after SAE_ARCHITECTURES (the --arch choices): read from other libraries' checkpoints
from . import gated  # noqa: E402  (loaded and evaluated, not trained)
from . import groupmax  # noqa: E402  (sparsify's; not an --arch choice)

__all__ = ["relu", "topk", "batchtopk", "jumprelu", "topafa", "gated", "groupmax", "SAE_ARCHITECTURES", "AFA_FORMS", "DEFAULT_K", "REGISTRY", "Architecture", "ArchConfig", "ArchFields", "architecture", "register",
           "Activation", "Code", "EncodeContext", "coo_code", "dense_code", "SPARSE_DENSITY", "ReLU", "TopK",
           "BatchTopK", "JumpReLU", "TopAFA", "candidates_for"]
