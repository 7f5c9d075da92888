"""interlayer.steering: steering vectors from contrastive data, injected at intermediate layers.

* :func:`train_vectors`: per-layer vectors (``mean_diff`` as CAA, ``pca`` as repeng,
  ``logistic``) from one activation-store pass; :func:`purify` removes what a vector
  shares with other traits' vectors (Handa et al. 2025);
* :func:`steer`: add or ablate vectors through the adapter's hooks, in forward passes and
  in ``generate`` with the KV cache, at all, prompt, generated or later positions;
* :func:`sweep`: layers x coefficients, behaviour shift against a random direction of the
  same norm, and the perplexity cost, each cell one batched store pass;
* :class:`SteeringVector` saves as safetensors and as llama.cpp control-vector GGUF.

Renamed (the old names stay in their modules, deprecated, for one release):
``SweepResult`` -> :class:`SteeringSweepResult`, ``generate`` -> :func:`generate_text`,
``calibrate`` -> :func:`calibrate_strength`.
"""

from .capability import Calibration, calibrate_strength, capability_cost, choice_accuracy, fluency, stability
from .datasets import ContrastPair, dataset_names, load_pairs
from .evaluation import SteeringSweepResult, answer_prompts, generate_text, p_matching, perplexity, sweep
from .gguf_io import from_gguf, from_repeng, to_gguf
from .inject import Injection, Steering, steer
from .vectors import SteeringVector, purify, train_vectors

__all__ = ["Calibration", "ContrastPair", "calibrate_strength", "capability_cost", "choice_accuracy", "fluency", "stability", "Injection", "Steering", "SteeringVector", "SteeringSweepResult", "answer_prompts", "generate_text", "dataset_names",
           "from_gguf", "from_repeng", "load_pairs", "p_matching", "perplexity", "purify", "steer", "sweep", "to_gguf",
           "train_vectors"]
