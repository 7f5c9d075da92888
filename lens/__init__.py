"""interlayer.lens: decode intermediate layers (logit lens; tuned lens and
latent-language analysis build on the same decoding path)."""

from .logit_lens import LogitLensResult, logit_lens

__all__ = ["LogitLensResult", "logit_lens"]
