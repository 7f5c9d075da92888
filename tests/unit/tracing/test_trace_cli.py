"""``interlayer trace`` on a saved tiny checkpoint: the user's facts flow in, the JSON
holds the traces, and a bad facts file is one line naming the file and the line."""

from __future__ import annotations

import json

from interlayer.cli import dispatch as cli
from tests.tiny_models import tiny_checkpoint_and_text


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_trace_runs_the_users_facts_and_writes_the_json(tmp_path, capsys):
    ckpt, _ = tiny_checkpoint_and_text(tmp_path, documents=2)
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "w5 w9 w14 w22", "subject": "w9", "target": "w17"}\n'
                     '{"prompt": "w6 w7 w8 <b>", "subject": "w7 w8", "target": "w30"}\n')
    out = tmp_path / "trace.json"
    code, stdout, err = _run(capsys, "trace", "--model", ckpt, "--facts", facts, "--n", 2, "--all-facts", "--kinds",
                             "resid,mlp", "--window", 2, "--samples", 2, "--no-progress", "--out", out,
                             "--figures", tmp_path / "t.html")
    assert code == 0, err
    payload = json.loads(out.read_text())
    assert payload["n_facts"] == 2 and [f["subject"] for f in payload["facts"]] == ["w9", "w7 w8"]
    assert payload["kinds"] == ["resid", "mlp"] and len(payload["bands"]) == 2
    assert len(payload["facts"][0]["scores"]["mlp"]) == 3  # tiny model: 3 layers


def test_a_bad_facts_file_is_one_line_before_the_model_loads(tmp_path, capsys):
    facts = tmp_path / "facts.jsonl"
    facts.write_text('{"prompt": "a b", "subject": "b", "target": "c"}\n{"prompt": "a b", "target": "c"}\n')
    code, _, err = _run(capsys, "trace", "--model", tmp_path / "no-such-model", "--facts", facts)
    assert code == 2
    assert err.strip().splitlines()[-1].endswith(f"{facts}:2: missing field 'subject' (each line needs prompt, "
                                                  "subject, target)")
    code, _, err = _run(capsys, "trace", "--model", tmp_path, "--kinds", "mlp,heads")
    assert code == 2 and "unknown kind 'heads'" in err
