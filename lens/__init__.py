"""interlayer.lens: decode intermediate layers.

* :func:`logit_lens` (nostalgebraist 2020), with a :class:`TunedLens` as a drop-in
  (Belrose et al. 2023; :func:`train_tuned_lens`, :func:`compare_lenses`) and a
  :class:`JacobianLens` (Gurnee et al. 2026; :func:`fit_jacobian_lens`);
* latent-language analysis (Wendler et al. 2024; Zhong et al. 2024);
* layer saturation and early exit;
* knowledge layers (this project's reading of LFD, Sun et al. 2025): IKS per layer
  (:func:`iks_on_data`, :func:`measure_iks`), layer fused decoding and DoLa
  (:func:`generate`), retrieval-augmented QA (:func:`evaluate_qa`) and SimHidden.

Every method reads activations from the activation store (:mod:`interlayer.store.collect`) and decodes through
:class:`interlayer.decoding.LayerDecoder`.
"""

from .config import GenerateConfig, IKSConfig, LatentConfig, QAConfig, SaturationConfig, TuneConfig
from .fused_decoding import DecodingOptions, Generation, dola_layers, generate
from .knowledge import IKSResult, SimHiddenResult, candidate_layers, jsd, sim_hidden
from .knowledge_runs import iks_on_data, measure_iks, sim_hidden_on_data
from .qa import QAResult, evaluate_qa
from .qa_data import QARecord, load_qa
from .lenses import LogitLens, TunedLens, check_lens_dir, load_lens
from .latent import LatentResult, latent_language
from .logit_lens import LogitLensResult, logit_lens
from .saturation import SaturationResult, saturation
from .tuning import LensComparison, compare_lenses, train_tuned_lens, tune_lens
from .tuning_options import JacobianOptions, TuneOptions
from .jacobian import JacobianLens
from .jacobian_fit import fit_jacobian_lens
from .tuned_lens_io import is_tuned_lens_dir, read_tuned_lens, write_tuned_lens

__all__ = [
    "is_tuned_lens_dir",
    "read_tuned_lens",
    "write_tuned_lens",
    "DecodingOptions",
    "GenerateConfig",
    "Generation",
    "IKSConfig",
    "IKSResult",
    "QAConfig",
    "QARecord",
    "QAResult",
    "SimHiddenResult",
    "candidate_layers",
    "dola_layers",
    "evaluate_qa",
    "generate",
    "iks_on_data",
    "jsd",
    "load_qa",
    "measure_iks",
    "sim_hidden",
    "sim_hidden_on_data",
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
    "check_lens_dir",
    "compare_lenses",
    "load_lens",
    "logit_lens",
    "train_tuned_lens",
    "tune_lens",
    "TuneOptions",
    "JacobianLens",
    "JacobianOptions",
    "fit_jacobian_lens",
]
