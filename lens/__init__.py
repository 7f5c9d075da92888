"""interlayer.lens: decode intermediate layers.

* :func:`logit_lens` (nostalgebraist 2020), with a :class:`TunedLens` as a drop-in
  (Belrose et al. 2023; :func:`train_tuned_lens`, :func:`compare_lenses`);
* latent-language analysis (Wendler et al. 2024; Zhong et al. 2024);
* layer saturation and early exit.

Every method reads activations from the activation store (:mod:`interlayer.activations`) and decodes through
:class:`interlayer.decoding.LayerDecoder`.
"""

from .config import LatentConfig, SaturationConfig, TuneConfig
from .lenses import LogitLens, TunedLens
from .latent import LatentResult, latent_language
from .logit_lens import LogitLensResult, logit_lens
from .saturation import SaturationResult, saturation
from .tuning import LensComparison, compare_lenses, train_tuned_lens, tune_lens

__all__ = [
    "LatentConfig",
    "LatentResult",
    "SaturationResult",
    "latent_language",
    "saturation",
    "LensComparison",
    "LogitLens",
    "LogitLensResult",
    "SaturationConfig",
    "TuneConfig",
    "TunedLens",
    "compare_lenses",
    "logit_lens",
    "train_tuned_lens",
    "tune_lens",
]
