"""Store benchmark: tokens/s for capturing the residual stream at every layer.

In one process, on the same model, batch and machine, round-robin so that noise
hits every method alike:

  (a) interlayer's store (``stream`` with select="tokens", every resid_post, rows kept
      in the model's dtype): ``store`` copies each chunk to the host (the default),
      ``store_on_device`` leaves it on the model's device (``output_device="model"``);
  (b) Hugging Face forward with ``output_hidden_states=True``;
  (c) TransformerLens ``TransformerBridge.run_with_cache`` with ``names_filter``
      (and ``stop_at_layer`` where that works);
  (d) nnsight ``trace`` with ``.save()`` on every layer's output;
  (e) the limit: the decoder body alone, no hooks, no unembedding.

Each anchor gets its own copy of the weights (TransformerLens swaps modules in
place; nnsight wraps them). ``--layer`` captures one layer instead of all.
Writes benchmarks/results/store.json (or --out). Not a timed test.

    python benchmarks/store.py [--model gemma-3-270m] [--batch 8] [--seq 128] [--repeats 5]
    python benchmarks/store.py --random-weights     # same config, random weights (no model package needed)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import interlayer
from interlayer.loading import ensure_converted
from interlayer.activations import stream

from common import Peak, device_name, stand_in_tokenizer, write_result


def load_copies(args, device, dtype):
    """Independent copies of the same weights: one per method family."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.random_weights:
        from transformers import Gemma3TextConfig

        config = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                  num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                                  max_position_embeddings=32768, query_pre_attn_scalar=256,
                                  layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)
        config.architectures = ["Gemma3ForCausalLM"]
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = base.state_dict()

        def fresh():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            model.load_state_dict(state)
            return model.to(device).eval()

        import tempfile

        return fresh, stand_in_tokenizer(config.vocab_size, tempfile.mkdtemp(prefix="interlayer-tok-"))
    entry = ensure_converted(args.model) if args.model in interlayer.EMBEDDED else Path(args.model)
    tok = AutoTokenizer.from_pretrained(entry)

    def fresh():
        return AutoModelForCausalLM.from_pretrained(entry, dtype=dtype).to(device).eval()

    return fresh, tok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--random-weights", action="store_true", help="Gemma 3 270M config with random weights")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layer", type=int, default=None, help="capture only this layer's resid_post")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip", default="", help="comma-separated methods to skip")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)

    fresh, tok = load_copies(args, device, dtype)
    hf = fresh()
    model = interlayer.load_model(hf, tokenizer=tok)
    n_layers = model.n_layers
    layers = list(range(n_layers)) if args.layer is None else [args.layer]
    torch.manual_seed(1)
    ids = torch.randint(10, 20000, (args.batch, args.seq))
    ids[:, 0] = 2  # BOS
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    n_tokens = ids.numel()
    sites = [f"resid_post.{l}" for l in layers]

    def run_store(output_device="cpu"):  # rows stored in the model's dtype, as HF returns them
        for chunk in stream(model, ids.cpu(), sites, batch_size=args.batch, memory_mb=4096, dtype=args.dtype,
                            output_device=output_device, progress=False):
            out = chunk
        return out

    def run_store_on_device():  # rows left on the model's device (no copy to the host)
        return run_store("model")

    def run_hf():
        out = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return [out.hidden_states[l + 1] for l in layers]

    def run_limit():
        body = hf.model
        if args.layer is None:
            return body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        with model.stop_after(args.layer):  # a plain forward hook that raises; no capture hooks
            try:
                body(input_ids=ids, attention_mask=mask, use_cache=False)
            except Exception:
                pass

    methods = {"store": run_store, "store_on_device": run_store_on_device, "hf": run_hf, "limit": run_limit}
    skip = set(filter(None, args.skip.split(",")))
    notes = {}
    if "nnsight" not in skip:
        try:
            from nnsight import LanguageModel

            nn_model = LanguageModel(fresh(), tokenizer=tok)
        except Exception as err:  # noqa: BLE001 - an anchor that cannot run is reported, not fatal
            notes["nnsight"] = f"not run: {type(err).__name__}: {err}"
            skip.add("nnsight")

        def run_nnsight():
            saved = []
            with nn_model.trace(ids, attention_mask=mask) as tracer:
                for l in layers:
                    saved.append(nn_model.model.layers[l].output.save())
                if args.layer is not None:
                    tracer.stop()  # nnsight's early exit after the last needed module
            return saved

        methods["nnsight"] = run_nnsight
    if "transformer_lens" not in skip:
        try:
            from transformer_lens.model_bridge import TransformerBridge

            bridge = TransformerBridge.boot_transformers("google/gemma-3-270m", hf_model=fresh(), tokenizer=tok)
        except Exception as err:  # noqa: BLE001
            notes["transformer_lens"] = f"not run: {type(err).__name__}: {err}"
            skip.add("transformer_lens")
    if "transformer_lens" not in skip:
        names = [f"blocks.{l}.hook_resid_post" for l in layers]
        stop = max(layers) + 1
        try:
            bridge.run_with_cache(ids[:1, :8], names_filter=names, stop_at_layer=stop)
            notes["transformer_lens"] = f"run_with_cache(names_filter=resid_post hooks, stop_at_layer={stop})"
        except Exception as err:  # noqa: BLE001 - report and fall back
            notes["transformer_lens"] = f"stop_at_layer failed ({type(err).__name__}); full forward"
            stop = None

        def run_tl():
            return bridge.run_with_cache(ids, names_filter=names, stop_at_layer=stop)[1]

        methods["transformer_lens"] = run_tl
    methods = {k: v for k, v in methods.items() if k not in skip}

    # Correctness before speed: every method must see the same activations.
    store_out = run_store()
    reference = run_hf()
    # Relative error (Frobenius) per layer; the last layer's HF hidden state is after the final norm.
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    rel_err = 0.0
    for i, l in enumerate(layers):
        got = store_out[f"resid_post.{l}"].view(args.batch, args.seq - 1, -1).to(reference[i].device).float()
        want = reference[i][:, 1:].float() if l < n_layers - 1 else None
        if want is not None:
            rel_err = max(rel_err, float((got - want).norm() / want.norm()))
    assert rel_err <= tolerance, f"the store differs from HF: relative error {rel_err:.2e} > {tolerance:.0e}"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in methods.values():  # warm-up
        fn()
    times = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    with Peak(device) as peak:
        run_store()
    with Peak(device) as hf_peak:
        run_hf()

    anchors = {k: tps[k] for k in ("hf", "transformer_lens", "nnsight") if k in tps}
    best_anchor = max(anchors, key=anchors.get) if anchors else None
    result = {
        "store_tps": round(tps["store"], 1),
        "store_on_device_tps": round(tps["store_on_device"], 1) if "store_on_device" in tps else None,
        "hf_tps": round(tps["hf"], 1) if "hf" in tps else None,
        "transformer_lens_tps": round(tps["transformer_lens"], 1) if "transformer_lens" in tps else None,
        "nnsight_tps": round(tps["nnsight"], 1) if "nnsight" in tps else None,
        "limit_tps": round(tps["limit"], 1),
        "peak_mem_mb": round(peak.mb, 1),
        "hf_peak_mem_mb": round(hf_peak.mb, 1),
        "device": device_name(device),
        "model": args.model + (" (random weights, same config)" if args.random_weights else ""),
        "batch": [args.batch, args.seq],
        "dtype": args.dtype,
        "layers": "all" if args.layer is None else [args.layer],
        "store_vs_best_anchor": round(tps["store"] / anchors[best_anchor], 2) if best_anchor else None,
        "store_on_device_vs_best_anchor": (round(tps["store_on_device"] / anchors[best_anchor], 2)
                                           if best_anchor and "store_on_device" in tps else None),
        "best_anchor": best_anchor,
        "store_vs_limit": round(tps["store"] / tps["limit"], 3),
        "repeats": args.repeats,
        "store_vs_hf_max_rel_err": rel_err,
        "notes": notes,
    }
    print(f"{'method':18s}{'tokens/s':>12s}{'median s':>10s}{'vs store':>10s}")
    for name in methods:
        print(f"{name:18s}{tps[name]:12.1f}{statistics.median(times[name]):10.3f}{tps['store'] / tps[name]:9.2f}x")
    print(f"store peak extra memory {peak.mb:.1f} MiB (HF output_hidden_states: {hf_peak.mb:.1f} MiB); device {result['device']}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
