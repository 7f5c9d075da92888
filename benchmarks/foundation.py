"""Foundation benchmark: model loading and memory-bounded layer decoding.

Side by side in one process, on Gemma 3 270M (embedded):

* load: transformers reading the packaged GGUF (dequantizing) vs interlayer reading
  its checksummed safetensors conversion (sha256 verification included);
* decoding all 18 layers x N positions: the naive way (one [layers, positions,
  vocab] logits tensor, then softmax/top-k/entropy) vs ``LayerDecoder`` in chunks.
  Peak extra memory is sampled from the process RSS by a background thread;
* the logit lens's decoding rate (rows = layers x positions, with what ``lens logit``
  computes: top-1, entropy, KL to the final layer) against the plain matmul limit:
  the same rows through the final norm and the unembedding alone, nothing else.

Writes ``benchmarks/results/foundation.json``. Not a timed test.

    python benchmarks/foundation.py [--positions 64]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import interlayer
from interlayer.decoding import LayerDecoder
from interlayer.model.loading import EMBEDDED, ensure_converted

from common import Peak, write_result


def naive_decode(model, hidden, k):
    logits = model.unembed_resid(hidden).float()  # [L, n, V] at once
    logp = torch.log_softmax(logits, -1)
    top = torch.topk(logp, k, -1)
    entropy = -(logp.exp() * logp).sum(-1)
    return top.indices, entropy


def logit_lens_rate(model, decoder, text: str, positions: int) -> dict:
    """Rows/s of the logit lens's decode against the norm + unembedding matmul alone."""
    ids = model.tokenize(text)["input_ids"][:, :positions]
    _, acts = model.run(ids, read=[f"resid_post.{l}" for l in range(model.n_layers)], logits=False)
    hidden = torch.stack([acts[f"resid_post.{l}"][0] for l in range(model.n_layers)])
    rows = hidden.shape[0] * hidden.shape[1]
    step = decoder.rows_per_chunk(with_reference=True)
    flat = hidden.reshape(-1, hidden.shape[-1])
    times = {"matmul": [], "lens": []}
    for _ in range(2):  # interleaved rounds; the faster of each is kept
        t0 = time.perf_counter()
        for start in range(0, rows, step):
            model.unembed(model.final_norm(flat[start:start + step]))
        times["matmul"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        decoder.decode(hidden, top_k=1, entropy=True, reference=hidden[-1])
        times["lens"].append(time.perf_counter() - t0)
    matmul_s, lens_s = min(times["matmul"]), min(times["lens"])
    return {"lens_rows": rows, "lens_positions": int(hidden.shape[1]), "matmul_rows_per_s": round(rows / matmul_s, 1),
            "lens_rows_per_s": round(rows / lens_s, 1), "lens_vs_matmul": round(matmul_s / lens_s, 3),
            "lens_what": "top-1, entropy, KL(final || layer) per row, as `interlayer lens logit` computes"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=64)
    parser.add_argument("--memory-mb", type=float, default=256.0)
    parser.add_argument("--lens-positions", type=int, default=128, help="positions for the logit-lens rate")
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    from transformers import AutoModelForCausalLM

    gguf = EMBEDDED["gemma-3-270m"].gguf_path()
    ensure_converted("gemma-3-270m")
    t0 = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    gguf_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = interlayer.load_model("gemma-3-270m", device="cpu")
    cached_s = time.perf_counter() - t0

    text = "The quick brown fox jumps over the lazy dog. " * 40
    ids = model.tokenize(text)["input_ids"][:, : args.positions]
    _, acts = model.run(ids, read=[f"resid_post.{l}" for l in range(model.n_layers)], logits=False)
    hidden = torch.stack([acts[f"resid_post.{l}"][0] for l in range(model.n_layers)])

    decoder = LayerDecoder(model, memory_mb=args.memory_mb)
    # Touch the unembedding once: safetensors weights are memory-mapped, and their
    # first use would otherwise count as decoding memory.
    decoder.decode(hidden[:1, :1], top_k=1)
    with Peak(torch.device('cpu')) as chunked_mem:
        t0 = time.perf_counter()
        out = decoder.decode(hidden, top_k=5, entropy=True, reference=hidden[-1])
        chunked_s = time.perf_counter() - t0
    with Peak(torch.device('cpu')) as naive_mem:
        t0 = time.perf_counter()
        naive_ids, naive_entropy = naive_decode(model, hidden, 5)
        naive_s = time.perf_counter() - t0
    assert torch.equal(naive_ids, out.top_ids), "chunked and naive top-k differ"
    max_entropy_diff = float((naive_entropy - out.entropy).abs().max())

    lens_rate = logit_lens_rate(model, decoder, text, args.lens_positions)
    result = {
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "model": "gemma-3-270m",
        "load_gguf_s": round(gguf_s, 2),
        "load_cached_s": round(cached_s, 2),
        "load_speedup": round(gguf_s / cached_s, 1),
        "decode_layers": model.n_layers,
        "decode_positions": int(hidden.shape[1]),
        "decode_naive_s": round(naive_s, 3),
        "decode_chunked_s": round(chunked_s, 3),
        "decode_naive_peak_mb": round(naive_mem.mb, 1),
        "decode_chunked_peak_mb": round(chunked_mem.mb, 1),
        "decode_memory_ratio": round(naive_mem.mb / max(chunked_mem.mb, 1e-9), 1),
        "decode_chunked_extras": "top-5, entropy and KL to the final layer (naive: top-5 and entropy only)",
        "max_entropy_diff": max_entropy_diff,
        "memory_mb_bound": args.memory_mb,
        **lens_rate,
    }
    print(f"{'':28s}{'baseline':>12s}{'interlayer':>12s}{'ratio':>8s}")
    print(f"{'load (s)':28s}{gguf_s:12.2f}{cached_s:12.2f}{gguf_s / cached_s:8.1f}x")
    print(f"{'decode all layers (s)':28s}{naive_s:12.3f}{chunked_s:12.3f}{naive_s / chunked_s:8.2f}x")
    print(f"{'decode peak extra RSS (MiB)':28s}{naive_mem.mb:12.1f}{chunked_mem.mb:12.1f}"
          f"{naive_mem.mb / max(chunked_mem.mb, 1e-9):8.1f}x")
    print(f"{'logit lens rows/s':28s}{lens_rate['matmul_rows_per_s']:12.1f}{lens_rate['lens_rows_per_s']:12.1f}"
          f"{lens_rate['lens_vs_matmul']:8.2f}x   (baseline: norm + unembedding matmul only)")
    write_result(Path(__file__).parent / "results" / "foundation.json", result)


if __name__ == "__main__":
    main()
