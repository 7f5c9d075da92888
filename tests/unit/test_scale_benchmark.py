"""benchmarks/scale.py (issue 27): its task list, its refusal of unknown tasks, a real run of
one command on the tiny config (peak RSS measured, the bound computed from the checkpoint's
bytes) and the markdown table of its results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import scale  # noqa: E402


def test_list_prints_every_task_without_building(tmp_path, capsys):
    assert scale.main(["--config", "tiny", "--list", "--work", str(tmp_path)]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == list(scale.TASKS)
    assert not any(tmp_path.iterdir())  # nothing built


def test_an_unknown_task_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        scale.main(["--tasks", "collect,train"])
    err = capsys.readouterr().err
    assert "unknown task(s) train" in err and "steer_sweep" in err


def test_a_tiny_run_measures_its_peak_against_the_bound(tmp_path):
    out = tmp_path / "scale.json"
    assert scale.main(["--config", "tiny", "--tasks", "collect,collect_x10", "--tokens", "32",
                       "--work", str(tmp_path / "work"), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    weights = scale.weights_bytes(tmp_path / "work" / "tiny")
    assert data["weights_mb"] == weights / 2**20 > 0
    assert data["bound_mb"] == pytest.approx((weights + 256 * 2**20 + 1.5 * 2**30) / 2**20)
    for name, tokens in (("collect", 32), ("collect_x10", 320)):
        task = data["tasks"][name]
        assert task["rc"] == 0 and task["tokens"] == tokens and task["within_bound"]
        assert 100 < task["peak_rss_mb"] < data["bound_mb"]  # a python with torch loaded, measured
        assert task["s_per_token"] == pytest.approx(task["timed_s"] / tokens)
    assert set(data["s_per_token_ratio_x10"]) == {"collect"}
    peaks = [t["peak_rss_mb"] for t in data["tasks"].values()]
    assert data["max_peak_over_bound_ratio"] == pytest.approx(max(peaks) / data["bound_mb"])
    table = scale.table([str(out)])
    assert table.count("\n") == 3 and "| tiny (" in table and "| collect_x10 |" in table


def test_the_table_marks_a_run_over_its_bound(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"config": "x", "weights_mb": 1024.0, "bound_mb": 2000.0, "s_per_token_ratio_x10": {},
                                "tasks": {"iks": {"rc": 0, "peak_rss_mb": 2500.0, "within_bound": False},
                                          "mexa": {"rc": 1, "peak_rss_mb": 900.0, "within_bound": True}}}))
    table = scale.table([str(path)])
    assert "| x (1.00 GiB) | iks | 2,500 | 2,000 | **no** |" in table
    assert "| mexa | 900 | 2,000 | rc 1 |" in table


def test_sae_train_is_judged_against_the_bound_with_its_state():
    # 16 bytes per SAE parameter (parameter, gradient, two Adam moments) + three dense step tensors
    d, h = 2048, 8 * 2048
    assert scale.sae_state_mb(d) == pytest.approx((16 * (2 * d * h + h + d) + 12 * 4096 * h) / 2**20)
    results = {"collect": {"peak_rss_mb": 900.0}, "sae_train": {"peak_rss_mb": 1500.0, "bound_with_sae_state_mb": 3000.0}}
    lines = scale.headlines(results, 1000.0)
    assert lines == {"max_peak_over_bound_ratio": 0.9, "sae_train_peak_over_bound_ratio": 1.5,
                     "sae_train_peak_over_bound_with_sae_state_ratio": 0.5}


def test_per_token_growth_is_the_ratio_and_the_marginal_cost():
    results = {"cache": {"tokens": 100, "timed_s": 3.0, "s_per_token": 0.03},
               "cache_x10": {"tokens": 1000, "timed_s": 12.0, "s_per_token": 0.012},
               "collect": {"tokens": 100, "timed_s": 1.0, "s_per_token": 0.01}}  # no x10 run: left out
    flat, marginal = scale.per_token_growth(results)
    assert flat == {"cache": pytest.approx(0.4)} and marginal == {"cache": pytest.approx(0.01)}
