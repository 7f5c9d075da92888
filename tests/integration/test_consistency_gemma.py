"""Integration: internal consistency on Gemma 3 270M, final layer against the model's logits."""

import pytest
import torch

from interlayer.probes import internal_consistency
from interlayer.probes.consistency import LABELS, label_probabilities, label_token_ids, load_examples, reasoning_up_to_answer

pytestmark = pytest.mark.integration


@pytest.mark.slow
def test_consistency_on_coinflip(gemma):
    examples = load_examples("coinflip", 3)
    result = internal_consistency(gemma, examples, LABELS["coinflip"], paths=2, max_new_tokens=40, progress=False)
    assert len(result.layers) == 19 and result.ic.shape == (3, 2)
    text = examples[0].prompt + reasoning_up_to_answer(result.texts[0][0])
    ids = label_token_ids(gemma, LABELS["coinflip"])
    probs = label_probabilities(gemma, [text], ids)
    with torch.no_grad():
        logits = gemma.model(**gemma.tokenizer(text, return_tensors="pt")).logits[0, -1]
    torch.testing.assert_close(probs[0, -1], torch.softmax(torch.log_softmax(logits, -1)[ids], -1), atol=1e-5, rtol=0)
