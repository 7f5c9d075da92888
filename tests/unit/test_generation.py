"""interlayer.generation: the one call of Hugging Face ``generate``, against plain loops
on tiny models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import interlayer
from interlayer.errors import InterlayerError
from interlayer.generation import Sampling, eos_ids, generate_ids, generate_texts, left_padded, stop_length
from tests.tiny_models import make_tiny, make_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return interlayer.load_model(make_tiny("llama"), tokenizer=make_tokenizer(tmp_path_factory.mktemp("tok")))


def _greedy_loop(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand: one full forward per token, no cache, no padding."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model.model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


def test_left_padded_batches_generate_what_each_prompt_does_alone(model):
    prompts = [[1, 5, 9, 13, 17, 21], [1, 30, 31], [1, 7, 8]]
    ids, mask = left_padded(model, prompts)
    assert ids[1].tolist() == [model.pad_token_id] * 3 + [1, 30, 31] and mask[1].tolist() == [0, 0, 0, 1, 1, 1]
    new = generate_ids(model, prompts, max_new_tokens=5)
    eos = eos_ids(model)
    for row, prompt in zip(new.tolist(), prompts):
        n = stop_length(model, row, eos, stop_at_newline=False)
        assert row[:n] == _greedy_loop(model, prompt, 5)[:n]


def test_texts_tokenize_with_bos_and_eos_ids(model):
    assert eos_ids(model) == {2}
    text = generate_texts(model, ["w5 w6 w7"], max_new_tokens=4)[0]
    ids = model.tokenize("w5 w6 w7")["input_ids"][0].tolist()
    assert ids[0] == model.bos_token_id
    loop = _greedy_loop(model, ids, 4)
    loop = loop[:stop_length(model, loop, eos_ids(model), stop_at_newline=False)]  # generate stops at EOS
    assert len(loop) < 4, "no EOS in four steps: the stop is not tested (see also test_knowledge's _until_stop)"
    assert text == model.tokenizer.decode(loop, skip_special_tokens=True)


def test_sampling_is_seeded(model):
    sampling = Sampling(temperature=0.7, top_p=0.95, seed=3)
    a = generate_texts(model, ["w5 w6"], max_new_tokens=6, sampling=sampling, paths=4)
    b = generate_texts(model, ["w5 w6"], max_new_tokens=6, sampling=sampling, paths=4)
    assert a == b and len(a) == 4
    assert len(set(a)) > 1, "four samples at temperature 0.7 were all equal: the test shows nothing"


def test_bad_input(model):
    with pytest.raises(InterlayerError, match="max_new_tokens"):
        generate_ids(model, ["w5"], max_new_tokens=0)
    with pytest.raises(InterlayerError, match="paths"):
        generate_ids(model, ["w5"], max_new_tokens=2, paths=3)
    with pytest.raises(InterlayerError, match="no prompts"):
        generate_ids(model, [], max_new_tokens=2)
    with pytest.raises(InterlayerError, match="top_p"):
        Sampling(top_p=0)


def test_hugging_face_generate_is_called_only_here():
    calls = []
    for folder in ("interlayer", "lens", "saes", "probes", "steering", "report", "tracing"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if re.search(r"\.model\.generate\(", line) and not line.lstrip().startswith(("#", "``")):
                    calls.append(f"{path.relative_to(ROOT)}:{number}")
    assert [call.split(":")[0] for call in calls] == ["interlayer/generation.py"], calls
