"""interlayer.probes: read what the layers encode.

* MEXA cross-lingual alignment (Kargaran et al. 2024): :func:`mexa`.
"""

from .config import MexaConfig
from .mexa import MexaResult, alignment_scores, mexa, mutual_nearest_hits, sentence_embeddings

__all__ = ["MexaConfig", "MexaResult", "alignment_scores", "mexa", "mutual_nearest_hits", "sentence_embeddings"]
