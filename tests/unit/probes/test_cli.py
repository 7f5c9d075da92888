"""``interlayer probes linear``: a labelled records file, probed at every layer of a tiny model."""

import json

import pytest

from interlayer.cli import dispatch as cli
from tests.tiny_models import make_tiny, make_tokenizer


@pytest.fixture
def ckpt(tmp_path, capsys):
    make_tiny("llama").save_pretrained(tmp_path / "ckpt")
    make_tokenizer(tmp_path / "ckpt")
    capsys.readouterr()
    return tmp_path / "ckpt"


def _records(path, n=24):
    # the label is which half of the vocabulary the words come from: the probe can see it
    rows = [{"sentence": " ".join(f"w{(5 if i % 2 else 35) + (i * 7 + j) % 20}" for j in range(6)), "kind": i % 2}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_probes_linear(capsys, ckpt, tmp_path):
    data = _records(tmp_path / "labelled.jsonl")
    out = tmp_path / "probe.csv"
    code = cli.main(["probes", "linear", "--model", str(ckpt), "--dataset", str(data), "--text-field", "sentence",
                     "--label-field", "kind", "--folds", "3", "--sites", "resid_post.*", "-o", str(out),
                     "--figures", str(tmp_path / "p.html"), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["site", "accuracy", "ci_low"] and len(lines) == 1 + 3  # three layers
    assert "24 examples, 2 classes" in captured.out
    assert "<script" in (tmp_path / "p.html").read_text()


def test_probes_linear_bad_input_before_the_model(capsys, tmp_path):
    data = _records(tmp_path / "labelled.jsonl")
    code = cli.main(["probes", "linear", "--model", "no-such-model", "--dataset", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and "--text-field 'text' is not a field" in err and "'sentence'" in err
    code = cli.main(["probes", "linear", "--model", "no-such-model", "--dataset", str(tmp_path / "x.txt")])
    assert code == 2 and "valid choices: '.jsonl'" in capsys.readouterr().err
    code = cli.main(["probes", "linear", "--model", "no-such-model"])
    assert code == 2 and "--dataset is required" in capsys.readouterr().err
