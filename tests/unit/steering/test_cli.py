"""``interlayer steer``: --chat is recorded in the vector, and ``steer apply --chat auto``
follows the recording."""

import json

import pytest

from interlayer.cli import dispatch as cli
from interlayer.steering import SteeringVector
from tests.tiny_models import make_tiny, make_tokenizer

PAIRS = [{"question": f"w{5 + i} w{20 + i}", "answer_matching_behavior": "w10 w12" if i % 2 else "w11 w13",
          "answer_not_matching_behavior": "w11 w13" if i % 2 else "w10 w12"} for i in range(12)]


@pytest.fixture
def setup(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    make_tiny("llama").save_pretrained(ckpt)
    make_tokenizer(ckpt)  # no chat template
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(p) for p in PAIRS))
    capsys.readouterr()
    return ckpt, data


def test_chat_is_recorded_and_followed(capsys, tmp_path, setup):
    ckpt, data = setup
    vec = tmp_path / "v.safetensors"
    assert cli.main(["steer", "train", "--model", str(ckpt), "--dataset", str(data), "--layers", "0-1",
                     "--site-kind", "resid_post", "-o", str(vec), "--no-progress"]) == 0
    trained = SteeringVector.load(vec)
    assert trained.layers == [0, 1] and trained.chat is False  # auto: a model without a chat template
    capsys.readouterr()
    # a vector recorded as trained through the chat template: `--chat auto` asks the same way,
    # which this tokenizer cannot (no template): a clear error, not a silent plain prompt
    trained.chat = True
    chatty = tmp_path / "chat.safetensors"
    trained.save(chatty)
    code = cli.main(["steer", "apply", "--model", str(ckpt), "--vector", str(chatty), "--prompt", "w5", "--prompt",
                     "w6", "--max-new-tokens", "2"])
    assert code == 2 and "no chat template" in capsys.readouterr().err
    code = cli.main(["steer", "apply", "--model", str(ckpt), "--vector", str(chatty), "--chat", "no", "--prompt", "w5",
                     "--prompt", "w6", "--max-new-tokens", "2", "--json"])
    runs = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["prompt"] for r in runs] == ["w5", "w6"] and all(r["chat"] is False for r in runs)
    # --chat yes on a model without a template: refused
    code = cli.main(["steer", "train", "--model", str(ckpt), "--dataset", str(data), "--chat", "yes", "-o",
                     str(tmp_path / "x.safetensors"), "--no-progress"])
    assert code == 2 and "no chat template" in capsys.readouterr().err


def test_steer_apply_refuses_a_non_finite_coefficient_before_loading(capsys, tmp_path):
    vec = tmp_path / "v.safetensors"
    vec.write_bytes(b"x")
    code = cli.main(["steer", "apply", "--model", "no-such-model", "--vector", str(vec), "--coef", "inf", "--prompt", "a"])
    err = capsys.readouterr().err
    assert code == 2 and "--coef" in err and "finite" in err and "no-such-model" not in err
