"""interlayer.probes: read what the layers encode.

* MEXA cross-lingual alignment (Kargaran et al. 2024): :func:`mexa`.
* Linear probes per layer with a shuffled-label control: :func:`probe_layers`.
* Internal consistency of reasoning (Xie et al. 2024): :func:`internal_consistency`.
"""

from .config import ConsistencyConfig, MexaConfig
from .consistency import (ConsistencyResult, calibrate_label_scores, consistency_scores, internal_consistency,
                          weighted_vote)
from .linear import ProbeResult, probe_features, probe_layers
from .mexa import MexaResult, alignment_scores, mexa, mutual_nearest_hits, sentence_embeddings

__all__ = ["ConsistencyConfig", "ConsistencyResult", "calibrate_label_scores", "consistency_scores", "internal_consistency",
           "weighted_vote", "MexaConfig", "MexaResult", "ProbeResult", "alignment_scores", "mexa", "mutual_nearest_hits",
           "probe_features", "probe_layers", "sentence_embeddings"]
