"""Memory bounds at real model sizes (issue 27): every command on random weights of a
published 1-3B config, in bfloat16, each in a process of its own whose peak RSS (the
process and its children, sampled every 20 ms) must stay within

    weights + memory_mb + 1.5 GiB

(``weights``: the checkpoint's safetensors bytes). Also the time per token of ``collect``
and ``cache`` (the call alone, timed inside its process, the load excluded) at ``--tokens``
and at ten times as many, which should stay flat (``s_per_token_ratio_x10`` near 1).

The checkpoint is built once under ``--work`` (``$INTERLAYER_CACHE/scale``): the published
config (sizes as in the model's ``config.json``), random weights drawn on the CPU with a
fixed seed, saved as safetensors with SmolLM2's tokenizer (ids < 49,152, inside every
config's vocabulary; the weights are random, so only the shapes matter). Nothing is
downloaded.

Run on an idle machine (one torch process at a time)::

    flock /tmp/interlayer-torch.lock python -m benchmarks.scale --config llama-3.2-1b \\
        --out benchmarks/results/scale_cpu_llama-3.2-1b.json

``--tasks`` picks commands (default: all of :data:`TASKS`); ``--list`` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GIB = 2**30

CONFIGS: dict[str, dict] = {
    # meta-llama/Llama-3.2-1B config.json (sizes)
    "llama-3.2-1b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2),
    # google/gemma-2-2b config.json (sizes)
    "gemma-2-2b": dict(model_type="gemma2", architectures=["Gemma2ForCausalLM"], hidden_size=2304,
                       intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=256, vocab_size=256000, max_position_embeddings=8192, sliding_window=4096,
                       query_pre_attn_scalar=256, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
    # meta-llama/Llama-3.1-8B config.json (sizes): the GPU suite's
    "llama-3.1-8b": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096,
                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1,
                         eos_token_id=2),
    # a tiny config of the same code path, for trying the script
    "tiny": dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, vocab_size=49152,
                 max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}
"""Published configs (sizes), by name."""


def build_checkpoint(name: str, work: Path, seed: int = 0, tokenizer: str | None = None) -> Path:
    """The random-weight bfloat16 checkpoint of config ``name`` under ``work`` (built once;
    a finished one has ``.done``), with the tokenizer saved in the folder ``tokenizer``
    (default: the embedded SmolLM2's, converted on first use)."""
    out = work / name
    if (out / ".done").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from interlayer.model.loading import ensure_converted

    shutil.rmtree(out, ignore_errors=True)  # an unfinished build of ours
    fields = dict(CONFIGS[name])
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    torch.manual_seed(seed)
    print(f"building {name}: random weights, bfloat16 ...", flush=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer or ensure_converted("smollm2-135m-instruct")).save_pretrained(out)
    (out / ".done").write_text("ok\n")
    return out


SAE_EXPANSION, SAE_TOKENS_PER_STEP = 8, 4096
"""``sae train``'s defaults: latents = 8 x d_model, 4,096 tokens per optimizer step."""


def sae_state_mb(d_model: int) -> float:
    """What training an SAE of ``sae train``'s default size holds beyond the issue's bound:
    its parameters, their gradients and Adam's two moments (16 bytes per parameter, float32),
    and up to three dense ``[tokens per step, latents]`` float32 tensors of the step
    (pre-activations, their gradient, the code). Measured here, one TopK step at d 2,048 and
    16,384 latents: 1.0 GiB of state and 0.57 GiB of step tensors at 4,096 tokens per step."""
    latents = SAE_EXPANSION * d_model
    params = 2 * d_model * latents + latents + d_model
    return (16 * params + 3 * 4 * SAE_TOKENS_PER_STEP * latents) / 2**20


def weights_bytes(checkpoint: Path) -> int:
    """The bytes of the checkpoint's safetensors files."""
    return sum(f.stat().st_size for f in checkpoint.glob("*.safetensors"))


def _timed_code(call: str) -> str:
    """A ``python -c`` program: load the checkpoint (argv[1]) in bfloat16, run ``call`` on it
    and print ``TIMED <seconds>`` of the call alone (the load excluded)."""
    return ("import sys, time, interlayer; m = interlayer.load_model(sys.argv[1], dtype='bfloat16'); "
            "from interlayer.model.loading import SAMPLE_TEXT; t = time.perf_counter(); "
            f"{call}; print('TIMED', time.perf_counter() - t)")


def _collect_code(tokens: int, memory_mb: int) -> str:
    return _timed_code(f"interlayer.collect(m, str(SAMPLE_TEXT), 'resid_post.*', tokens={tokens}, "
                       f"context_length=128, memory_mb={memory_mb}, progress=False)")


def _cache_code(tokens: int, memory_mb: int) -> str:
    return _timed_code(f"interlayer.cache(m, str(SAMPLE_TEXT), 'resid_post.*', sys.argv[2], tokens={tokens}, "
                       f"context_length=128, memory_mb={memory_mb}, progress=False)")


def tasks(ckpt: Path, tmp: Path, tokens: int, memory_mb: int, layers: int) -> dict[str, tuple[list[str], int]]:
    """Each task's command line and the tokens it runs the model on (0: not a throughput task);
    the SAE and the steering sweep at the middle block of ``layers``."""
    from interlayer.model.loading import SAMPLE_TEXT

    il = [sys.executable, "-m", "interlayer"]  # the interlayer command, also where no entry script is installed
    data = ["--data", str(SAMPLE_TEXT)]
    mid = str(layers // 2)
    model = ["--model", str(ckpt), "--dtype", "bfloat16", "--no-progress"]
    py = [sys.executable, "-c"]
    return {
        "collect": (py + [_collect_code(tokens, memory_mb), str(ckpt)], tokens),
        "collect_x10": (py + [_collect_code(10 * tokens, memory_mb), str(ckpt)], 10 * tokens),
        "cache": (py + [_cache_code(tokens, memory_mb), str(ckpt), str(tmp / "cache")], tokens),
        "cache_x10": (py + [_cache_code(10 * tokens, memory_mb), str(ckpt), str(tmp / "cache_x10")], 10 * tokens),
        "lens_logit": (il + ["lens", "logit", *model, "--memory-mb", str(memory_mb)], 0),
        "mexa": (il + ["probes", "mexa", *model, "--n", "10", "--langs", "eng_Latn,fra_Latn,deu_Latn",
                       "--out", str(tmp / "mexa.json")], 0),
        "sae_train": (il + ["sae", "train", *model, *data, "--site", f"resid_post.{mid}", "--tokens", str(tokens),
                            "--memory-mb", str(memory_mb), "--eval-tokens", "256", "--out", str(tmp / "sae")], 0),
        "steer_sweep": (il + ["steer", "sweep", *model, "--n", "4", "--train-n", "8", "--layers", mid,
                              "--coefs=-4,4", "--perplexity-tokens", "64", "--out", str(tmp / "steer.json")], 0),
        "iks": (il + ["lens", "iks", *model, "--n", "4", "--max-new-tokens", "4", "--out", str(tmp / "iks.json")], 0),
        "report": (il + ["report", *model, "--profile", "quick", "--only", "model,logit_lens",
                         "--out", str(tmp / "report.html")], 0),
        # every section but sae (which needs a trained SAE): slower, so not in the default set
        "report_all": (il + ["report", *model, "--profile", "quick", "--skip", "sae",
                             "--out", str(tmp / "report_all.html")], 0),
    }


TASKS = ("collect", "collect_x10", "cache", "cache_x10", "lens_logit", "mexa", "sae_train", "steer_sweep", "iks",
         "report")
"""The commands measured by default, in order (``report``: the model card and the logit lens)."""
OPTIONAL_TASKS = ("report_all",)
"""Commands measured only when asked (``report_all``: the quick report's every section but ``sae``)."""


def _gpu_used_mb() -> float | None:
    """The memory used on GPU 0 as nvidia-smi reports it (MiB), or ``None`` without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def run_measured(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run ``cmd``; its wall time, exit code, the tail of its output, the peak RSS of it and
    its children (sampled every 20 ms) and, on a GPU machine, the peak of GPU 0's used
    memory above what was used before (nvidia-smi, every 0.5 s)."""
    import psutil

    start = time.perf_counter()
    gpu_before = _gpu_used_mb()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    peak, gpu_peak = [0], [0.0]
    done = threading.Event()

    def sample_gpu() -> None:
        while gpu_before is not None and not done.wait(0.5):
            used = _gpu_used_mb()
            if used is not None:
                gpu_peak[0] = max(gpu_peak[0], used - gpu_before)

    def sample() -> None:
        parent = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                peak[0] = max(peak[0], rss)
            except psutil.Error:
                pass
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    gpu_thread = threading.Thread(target=sample_gpu, daemon=True)
    thread.start()
    gpu_thread.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    done.set()
    thread.join()
    gpu_thread.join()
    timed = [float(line.split()[1]) for line in out.splitlines() if line.startswith("TIMED ")]
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - start, "peak_rss_mb": peak[0] / 2**20,
            "timed_s": timed[0] if timed else None, "output_tail": out[-1500:],
            **({"gpu_peak_mb": gpu_peak[0]} if gpu_before is not None else {})}


def per_token_growth(results: dict[str, dict]) -> tuple[dict[str, float], dict[str, float]]:
    """For ``collect`` and ``cache`` run at n and 10 n tokens: the time per token at 10 n over
    that at n (flat: near 1; below 1 where the fixed costs of a call weigh on the short run),
    and the marginal time per token of the 9 n more tokens, ``(t_10n - t_n) / 9 n``."""
    flat, marginal = {}, {}
    for base in ("collect", "cache"):
        one, ten = results.get(base, {}), results.get(f"{base}_x10", {})
        if "s_per_token" in one and "s_per_token" in ten:
            flat[base] = ten["s_per_token"] / one["s_per_token"]
            marginal[base] = (ten["timed_s"] - one["timed_s"]) / (ten["tokens"] - one["tokens"])
    return flat, marginal


def headlines(results: dict[str, dict], bound_mb: float) -> dict[str, float]:
    """The largest peak over the bound of the commands but ``sae train``, and ``sae train``'s
    over the bound and over the bound with its SAE's state (a value above 1 is over)."""
    out = {}
    others = [r["peak_rss_mb"] for name, r in results.items() if name != "sae_train"]
    if others:
        out["max_peak_over_bound_ratio"] = max(others) / bound_mb
    if "sae_train" in results:
        sae = results["sae_train"]
        out["sae_train_peak_over_bound_ratio"] = sae["peak_rss_mb"] / bound_mb
        if "bound_with_sae_state_mb" in sae:
            out["sae_train_peak_over_bound_with_sae_state_ratio"] = sae["peak_rss_mb"] / sae["bound_with_sae_state_mb"]
    return out


def table(paths: list[str]) -> str:
    """A markdown table of result files written by ``--out``: per config and command, the
    peak RSS against the bound, and the time per token of the throughput commands."""
    rows = ["| config (weights) | command | peak RSS MiB | bound MiB | within | time per token | x10 / x1 per token |",
            "|---|---|---:|---:|---|---:|---:|"]
    for path in paths:
        data = json.loads(Path(path).read_text())
        head = f"{data['config']} ({data['weights_mb'] / 1024:.2f} GiB)"
        ratios = data.get("s_per_token_ratio_x10", {})
        marginal = data.get("marginal_s_per_token_x10", {})
        for name, res in data["tasks"].items():
            per_token = f"{res['s_per_token'] * 1e3:.1f} ms" if "s_per_token" in res else ""
            ratio = f"{ratios[name]:.2f}" if name in ratios else ""
            if name in marginal:
                ratio += f"; marginal {marginal[name] * 1e3:.1f} ms"
            ok = ("yes" if res["within_bound"] else "**no**") if res["rc"] == 0 else f"rc {res['rc']}"
            bound = f"{data['bound_mb']:,.0f}"
            if "sae_state_mb" in res:
                bound += f" (+{res['sae_state_mb']:,.0f} SAE state)"
                ok += f"; {'yes' if res['within_bound_with_sae_state'] else '**no**'} with the SAE's state"
            rows.append(f"| {head} | {name} | {res['peak_rss_mb']:,.0f} | {bound} | {ok} | {per_token} | {ratio} |")
    return "\n".join(rows)


def measure(name: str, command: tuple[list[str], int], config: str, bound_mb: float, env: dict[str, str],
            timeout: float) -> dict:
    """Run one task's command and judge its peak against ``bound_mb`` (``sae train`` also
    against the bound with its SAE's state, :func:`sae_state_mb`); prints one line."""
    cmd, tokens = command
    print(f"== {name}", flush=True)
    res = run_measured(cmd, env, timeout)
    res["tokens"] = tokens
    res["within_bound"] = res["peak_rss_mb"] <= bound_mb
    if name == "sae_train":  # the SAE being trained is weights too: the bound with its state (see sae_state_mb)
        res["sae_state_mb"] = sae_state_mb(CONFIGS[config]["hidden_size"])
        res["bound_with_sae_state_mb"] = bound_mb + res["sae_state_mb"]
        res["within_bound_with_sae_state"] = res["peak_rss_mb"] <= res["bound_with_sae_state_mb"]
    if tokens and res["timed_s"]:
        res["s_per_token"] = res["timed_s"] / tokens
    sae = (f"; with the SAE's state {res['bound_with_sae_state_mb']:.0f}: "
           f"{'ok' if res['within_bound_with_sae_state'] else 'OVER'}") if "sae_state_mb" in res else ""
    print(f"   rc={res['rc']} wall={res['wall_s']:.1f}s peak={res['peak_rss_mb']:.0f} MiB "
          f"(bound {bound_mb:.0f}) {'ok' if res['within_bound'] else 'OVER'}{sae}", flush=True)
    return res


def summarise(args: argparse.Namespace, weights: int, bound_mb: float, results: dict[str, dict]) -> dict:
    """The result file's record: the config, the device, the bound, the headline ratios and every task."""
    import torch

    flat, marginal = per_token_growth(results)
    device = (f"{torch.cuda.get_device_name(0)} (the commands' default device), host {os.cpu_count()} cores"
              if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    return {"config": args.config, "config_fields": CONFIGS[args.config], "dtype": "bfloat16", "device": device,
            "weights_mb": weights / 2**20, "memory_mb": args.memory_mb, "bound_mb": bound_mb,
            "model": f"{args.config} config, random bfloat16 weights", **headlines(results, bound_mb),
            "tokens": args.tokens, "tasks": results, "s_per_token_ratio_x10": flat,
            "marginal_s_per_token_x10": marginal,
            "note": "random weights of the published config's sizes; SmolLM2's tokenizer"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="llama-3.2-1b")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help=f"comma-separated, of {', '.join(TASKS + OPTIONAL_TASKS)} (default: all but the last)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens of collect/cache/sae train (x10 for *_x10)")
    parser.add_argument("--memory-mb", type=int, default=256)
    parser.add_argument("--work", default=None, help="where checkpoints are built (default $INTERLAYER_CACHE/scale)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per task")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder for the checkpoint (default: the "
                                                          "embedded SmolLM2's; on a machine without it, a copy)")
    parser.add_argument("--list", action="store_true", help="print the tasks' command lines, run nothing")
    parser.add_argument("--out", default=None)
    parser.add_argument("--table", nargs="+", metavar="JSON", help="print the markdown table of these results, run nothing")
    args = parser.parse_args(argv)
    args.chosen = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in args.chosen if t not in TASKS + OPTIONAL_TASKS]
    if unknown and not args.table:
        parser.error(f"unknown task(s) {', '.join(unknown)}; valid choices: {', '.join(TASKS + OPTIONAL_TASKS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    from interlayer.model.conversion_cache import cache_root

    work = Path(args.work) if args.work else cache_root() / "scale"
    tmp = work / f"{args.config}-runs"
    commands = tasks(work / args.config, tmp, args.tokens, args.memory_mb, CONFIGS[args.config]["num_hidden_layers"])
    if args.list:
        for name in args.chosen:
            print(name, " ".join(commands[name][0]))
        return 0
    ckpt = build_checkpoint(args.config, work, tokenizer=args.tokenizer)
    weights = weights_bytes(ckpt)
    bound_mb = (weights + args.memory_mb * 2**20 + 1.5 * GIB) / 2**20
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for name in args.chosen:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        results[name] = measure(name, commands[name], args.config, bound_mb, env, args.timeout)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summarise(args, weights, bound_mb, results), indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0 if all(r["rc"] == 0 and r.get("within_bound_with_sae_state", r["within_bound"])
                    for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
