"""Integration: a language-identity probe on FLORES sentences through Gemma 3 270M."""

import pytest

from interlayer.probes import probe_layers
from interlayer.probes.mexa import load_parallel

pytestmark = pytest.mark.integration


def test_language_identity_is_linearly_decodable(gemma):
    langs = ["eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn"]  # one script, so not a trivial spelling cue
    data = load_parallel(langs, 40)
    texts = [s for lang in langs for s in data[lang]]
    labels = [lang for lang in langs for _ in data[lang]]
    result = probe_layers(gemma, texts, labels, sites=["resid_post.2", "resid_post.8", "resid_post.14"], folds=4,
                          progress=False)
    frame = result.to_frame()
    assert result.chance == 0.25
    assert (frame.accuracy > 0.9).all(), frame
    assert (frame.control < 0.45).all(), frame
