"""Smoke tests of the benchmark scripts' command lines: ``python -m benchmarks`` lists and
selects, reports a missing script instead of crashing; the store benchmark's arguments, its
line fit and its on-device Llama build; the shell scripts parse; one tiny store run (a few seconds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"


def _load(name: str, path: Path):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_list_names_every_benchmark():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--list"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    names = [line.split()[0] for line in out.splitlines()]
    assert names == ["store", "store_layer8", "cache", "cache_3layers", "sae", "topafa", "mexa", "steering",
                     "lens_comparison", "scale_llama", "scale_gemma"]
    assert "--layer 8" in out.splitlines()[1]


def test_unknown_name_is_refused_with_the_choices():
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "valid choices: store, store_layer8" in run.stderr


def test_a_missing_script_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    main = _load("benchmarks_main", BENCH / "__main__.py")
    monkeypatch.setattr(main, "HERE", tmp_path)  # no scripts there
    assert main.main(["--only", "store,topafa", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "benchmarks/store.py is missing" in out and "topafa missing" in out


def test_store_arguments_and_fit():
    store = _load("store_bench", BENCH / "store.py")
    args = store.parse_args(["--random-weights", "--fit", "--fit-batches", "8,32"])
    assert args.config == "gemma-3-270m" and args.fit and args.fit_batches == "8,32"
    parts = _load("store_parts", BENCH / "store_parts.py")
    fit = parts.fit_line([(100, 0.003 + 100 * 2e-6), (1000, 0.003 + 1000 * 2e-6), (5000, 0.003 + 5000 * 2e-6)])
    assert fit["a_ms_per_call"] == pytest.approx(3.0, abs=1e-6) and fit["b_us_per_token"] == pytest.approx(2.0)
    assert fit["worst_rel_residual"] == pytest.approx(0.0, abs=1e-9)


def test_llama_made_from_meta_equals_one_built_normally():
    parts = _load("store_parts", BENCH / "store_parts.py")
    config = parts.llama_config(parts.LLAMA_TINY)
    a = parts.materialise(config, torch.device("cpu"), torch.float32, seed=0)
    b = parts.materialise(config, torch.device("cpu"), torch.float32, seed=0)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name  # the same seed, the same weights
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    assert torch.equal(a.model.rotary_emb.inv_freq, plain.model.rotary_emb.inv_freq)  # rebuilt, not garbage
    assert parts.LLAMA_31_8B["hidden_size"] == 4096 and parts.LLAMA_31_8B["num_key_value_heads"] == 8
    with torch.no_grad():
        logits = a(torch.tensor([[2, 5, 7]])).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("script", ["gpu_suite.sh", "gpu_wheels.sh", "run_cpu_fair.sh"])
def test_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(BENCH / script)], check=True)


def test_tiny_store_run_checks_and_records(tmp_path):
    out = tmp_path / "store.json"
    subprocess.run([sys.executable, str(BENCH / "store.py"), "--config", "llama-tiny", "--batch", "2", "--seq", "12",
                    "--batches-per-call", "2", "--repeats", "1", "--skip", "nnsight,transformer_lens",
                    "--out", str(out)], cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["store_vs_hf_max_rel_err"] == 0.0
    assert {"store", "store_on_device", "hf_body", "hf_body_to_host", "limit"} <= set(result["tps"])
    assert 0 < result["prep_only_fraction_of_limit"]
    assert "hf_body_pinned" in result["notes"]  # CUDA only
