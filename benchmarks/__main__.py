"""The CPU benchmark set: ``python -m benchmarks`` (or ``make bench``) runs each benchmark
script in its own process, one after another, with the arguments that produced the
committed CPU results, and writes their JSON to benchmarks/results/.

    python -m benchmarks                 # all of them (about 40 minutes on a 2-core CPU)
    python -m benchmarks --list          # the names and command lines, nothing run
    python -m benchmarks --only store,sae
    python -m benchmarks --quick         # a smoke run: tiny sizes, results to a temporary folder

A script that is missing is reported and skipped; a script that fails is reported, the
others still run, and the exit status is 1. Run on an otherwise idle machine: the figures
are tokens/s and seconds. The embedded models must be installed (gemma-3-270m;
smollm2-135m-instruct for steering); ``--quick`` needs neither for the store, which then
uses a toy Llama with random weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The SAE sweep's work folder: with a trained top-AFA SAE there, the selection is timed on trained weights.
WORK = Path(os.environ.get("INTERLAYER_SAE_WORK", Path.home() / ".cache/interlayer/work/sae_sweep"))


def _sae_trained() -> list[str]:
    sae, acts = WORK / "topafa_sel_l8", WORK / "acts_l8"
    return ["--sae", str(sae), "--activations", str(acts)] if sae.is_dir() and acts.is_dir() else []


def full_set() -> dict[str, tuple[str, list[str]]]:
    """Each benchmark: its script and arguments (the CPU results' settings)."""
    store = ["--model", "gemma-3-270m", "--dtype", "float32", "--batch", "8", "--seq", "128", "--batches-per-call", "4",
             "--repeats", "3"]
    return {
        "store": ("store.py", [*store, "--out", str(RESULTS / "store.json")]),
        "store_layer8": ("store.py", [*store, "--layer", "8", "--out", str(RESULTS / "store_layer8.json")]),
        "cache": ("cache.py", ["--model", "gemma-3-270m", "--layers", "all", "--tokens", "8128", "--repeats", "5",
                               "--out", str(RESULTS / "cache_cpu_all_layers.json")]),
        "cache_3layers": ("cache.py", ["--model", "gemma-3-270m", "--layers", "3,8,12", "--tokens", "8128",
                                       "--repeats", "5", "--out", str(RESULTS / "cache_cpu.json")]),
        "sae": ("sae.py", [*_sae_trained(), "--device", "cpu", "--batch", "1024", "--rounds", "3", "--steps", "3",
                           "--out", str(RESULTS / "sae_step_cpu.json")]),
        "topafa": ("topafa.py", ["--device", "cpu", "--out", str(RESULTS / "topafa_cpu.json")]),
        "mexa": ("mexa.py", ["--model", "gemma-3-270m", "--langs", "fra_Latn,deu_Latn,zho_Hans", "--n", "100",
                             "--pooling", "weighted", "--batch-size", "16", "--repeats", "3",
                             "--out", str(RESULTS / "mexa.json")]),
        "steering": ("steering.py", ["--model", "smollm2-135m-instruct", "--dataset", "persona:agreeableness",
                                     "--prompts", "64", "--batch-size", "16", "--new-tokens", "64", "--repeats", "5",
                                     "--sweep-repeats", "2", "--vector-repeats", "3", "--vector-pairs", "64",
                                     "--out", str(RESULTS / "steering.json")]),
        # issue 26: logit, tuned and Jacobian lenses on both embedded models (a findings run, not a ratio)
        "lens_comparison": ("lens_comparison.py", ["--out", str(RESULTS / "lens_comparison.json")]),
        # issue 27: peak memory of every command on random bf16 weights of published 1-3B configs
        "scale_llama": ("scale.py", ["--config", "llama-3.2-1b", "--out", str(RESULTS / "scale_cpu_llama-3.2-1b.json")]),
        "scale_gemma": ("scale.py", ["--config", "gemma-2-2b", "--out", str(RESULTS / "scale_cpu_gemma-2-2b.json")]),
    }


def quick_set(out: Path) -> dict[str, tuple[str, list[str]]]:
    """The same scripts at smoke-test sizes, writing into ``out``."""
    tiny = ["--config", "llama-tiny", "--batch", "2", "--seq", "16", "--batches-per-call", "2", "--repeats", "1"]
    return {
        "store": ("store.py", [*tiny, "--out", str(out / "store.json")]),
        "store_layer8": ("store.py", [*tiny, "--layer", "1", "--out", str(out / "store_layer8.json")]),
        "cache": ("cache.py", ["--layers", "3", "--tokens", "254", "--repeats", "1", "--out", str(out / "cache.json")]),
        "cache_3layers": ("cache.py", ["--layers", "3,8,12", "--tokens", "254", "--repeats", "1",
                                       "--out", str(out / "cache_3layers.json")]),
        "sae": ("sae.py", ["--device", "cpu", "--batch", "64", "--d-in", "32", "--latents", "128", "--k", "4",
                           "--rounds", "1", "--steps", "1", "--no-saelens", "--out", str(out / "sae.json")]),
        "topafa": ("topafa.py", ["--device", "cpu", "--batch", "64", "--d-in", "32", "--latents", "128", "--k", "4",
                                 "--fresh-batch", "64", "--rounds", "1", "--repeats", "1",
                                 "--out", str(out / "topafa.json")]),
        "mexa": ("mexa.py", ["--langs", "fra_Latn", "--n", "4", "--batch-size", "4", "--repeats", "1",
                             "--out", str(out / "mexa.json")]),
        "steering": ("steering.py", ["--prompts", "4", "--batch-size", "4", "--new-tokens", "4", "--repeats", "1",
                                     "--sweep-repeats", "1", "--vector-repeats", "1", "--vector-pairs", "4",
                                     "--out", str(out / "steering.json")]),
        "scale_llama": ("scale.py", ["--config", "tiny", "--tasks", "collect,collect_x10", "--tokens", "32",
                                     "--work", str(out / "scale"), "--out", str(out / "scale.json")]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="print the benchmarks and their command lines")
    parser.add_argument("--only", default="", help="comma-separated names to run (see --list)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, results to a temporary folder (--out)")
    parser.add_argument("--out", default=None, help="with --quick: where the results go")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that runs the scripts")
    args = parser.parse_args(argv)
    out = Path(args.out or tempfile.mkdtemp(prefix="interlayer-bench-")) if args.quick else RESULTS
    benches = quick_set(out) if args.quick else full_set()
    only = [n for n in args.only.split(",") if n]
    unknown = [n for n in only if n not in benches]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; valid choices: {', '.join(benches)}")
    chosen = {k: v for k, v in benches.items() if not only or k in only}
    if args.list:
        for name, (script, rest) in chosen.items():
            present = "" if (HERE / script).is_file() else "   (missing)"
            print(f"{name:<16s} {args.python} benchmarks/{script} {' '.join(rest)}{present}")
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    status = {}
    for name, (script, rest) in chosen.items():
        if not (HERE / script).is_file():
            print(f"== {name}: benchmarks/{script} is missing; skipped", flush=True)
            status[name] = "missing"
            continue
        print(f"== {name}: benchmarks/{script} {' '.join(rest)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([args.python, str(HERE / script), *rest], cwd=HERE.parent, env=env).returncode
        status[name] = "ok" if rc == 0 else f"failed (rc {rc})"
        print(f"   {name}: {status[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    print("summary: " + ", ".join(f"{k} {v}" for k, v in status.items()) + (f"; results in {out}" if args.quick else ""))
    return 1 if any(v.startswith("failed") for v in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
