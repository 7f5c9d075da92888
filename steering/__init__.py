"""interlayer.steering: steering vectors from contrastive data, injected at intermediate layers.

* :func:`train_vectors`: per-layer vectors (``mean_diff`` as CAA, ``pca`` as repeng,
  ``logistic``) from one activation-store pass; :func:`purify` removes what a vector
  shares with other traits' vectors (Handa et al. 2025);
* :func:`steer`: add or ablate vectors through the adapter's hooks, in forward passes and
  in ``generate`` with the KV cache, at all, prompt, generated or later positions;
* :func:`sweep`: layers x coefficients, behaviour shift against a random direction of the
  same norm, and the perplexity cost, each cell one batched store pass;
* :class:`SteeringVector` saves as safetensors and as llama.cpp control-vector GGUF.
"""

from .capability import Calibration, calibrate, capability_cost, choice_accuracy, fluency, stability
from .datasets import ContrastPair, dataset_names, load_pairs
from .evaluation import SweepResult, answer_prompts, p_matching, perplexity, sweep
from .gguf_io import from_gguf, to_gguf
from .inject import Injection, Steering, steer
from .vectors import SteeringVector, purify, train_vectors

__all__ = ["Calibration", "ContrastPair", "calibrate", "capability_cost", "choice_accuracy", "fluency", "stability", "Injection", "Steering", "SteeringVector", "SweepResult", "answer_prompts", "dataset_names",
           "from_gguf", "load_pairs", "p_matching", "perplexity", "purify", "steer", "sweep", "to_gguf",
           "train_vectors"]
