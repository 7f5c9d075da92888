"""Store benchmark: tokens/s for capturing the residual stream at every layer.

In one process, on the same model, batches and machine, round-robin so that noise
hits every method alike, every method doing the same work: the resid_post of the
requested layers for ``--batches-per-call`` batches per timed call, handed over one
batch at a time, no LM head:

  (a) interlayer's store (``stream`` with select="tokens", rows kept in ``--dtype``):
      ``store`` copies each chunk to the host (the default), ``store_on_device`` leaves
      it on the model's device (``output_device="model"``). ``--memory-mb`` defaults to
      one batch of rows, so each chunk is one batch, as the anchors hand them over;
  (b) ``hf_body``: the Hugging Face decoder body, ``AutoModelForCausalLM.model(input_ids,
      attention_mask, output_hidden_states=True)``, no LM head; for ``--layer l`` the
      body truncated to blocks 0..l (``model.model.layers`` swapped for a ModuleList of
      the first l+1 blocks, restored afterwards);
  (c) ``hf_body_to_host``: (b), then each read layer's hidden state copied ``.cpu()``,
      the same work as (a)'s rows to the host;
  (d) TransformerLens ``TransformerBridge.run_with_cache`` with ``names_filter`` and
      ``stop_at_layer`` (see the notes in the JSON: at every layer the bridge cannot stop
      before its unembedding);
  (e) nnsight ``trace`` with ``.save()`` on every read layer's output and ``tracer.stop()``
      after the deepest;
  (f) the limit: the bare decoder body, no hidden states, no hooks, no LM head
      (truncated like (b) for ``--layer``).

``--with-head`` adds the previous, unfair anchor (the CausalLM with its 262k-token LM
head, ``output_hidden_states=True``) for reference; it never counts as an anchor.
Tokens are counted without the BOS positions, which the store drops. Each anchor gets
its own copy of the weights (TransformerLens swaps modules in place; nnsight wraps
them). Peak memory is measured for every method on the same call. Writes
benchmarks/results/store.json (or --out); the JSON's ``anchors`` names each method's
configuration. Not a timed test.

    python benchmarks/store.py [--model gemma-3-270m] [--batch 8] [--seq 128] [--repeats 3] [--batches-per-call 4]
    python benchmarks/store.py --random-weights     # same config, random weights (no model package needed)
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import interlayer
from interlayer.store.collect import stream
from interlayer.store.capture import row_bytes
from interlayer.model.loading import ensure_converted

from common import Peak, device_name, relative_error, stand_in_tokenizer, write_result

# The storage-dtype keyword of stream() (``dtype`` before it was renamed ``storage_dtype``).
STORAGE_DTYPE = "storage_dtype" if "storage_dtype" in inspect.signature(stream).parameters else "dtype"


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


@contextlib.contextmanager
def truncated_body(hf, depth: int | None):
    """The decoder body of ``hf``; with ``depth``, only its first ``depth`` blocks run
    (the ModuleList is swapped, which is compile-friendly, unlike an exception) and its
    final norm is skipped, so ``hidden_states[depth]`` is block ``depth - 1``'s raw output
    whatever the transformers version does with the last hidden state. Restored on exit."""
    body = hf.base_model
    if depth is None:
        yield body
        return
    layers, norm = body.layers, body.norm
    body.layers, body.norm = torch.nn.ModuleList(list(layers)[:depth]), torch.nn.Identity()
    try:
        yield body
    finally:
        body.layers, body.norm = layers, norm


def anchor_configs(args, layers: list[int], n_layers: int, tl_stop: int | None) -> dict[str, str]:
    """What each method runs, in words (the JSON's ``anchors``)."""
    one = args.layer is not None
    depth = f"; body truncated to blocks 0..{args.layer} (model.model.layers = ModuleList(layers[:{args.layer + 1}]), " \
            "final norm skipped), restored after the call" if one else ""
    per_call = f"{args.batches_per_call} batch(es) of {args.batch} x {args.seq} per timed call, one at a time"
    return {
        "store": f"interlayer.stream(ids, {len(layers)} resid_post site(s), select='tokens', batch_size={args.batch}, "
                 f"{STORAGE_DTYPE}='{args.dtype}', output_device='cpu', memory_mb=one batch of rows): rows without "
                 f"BOS copied to the host chunk by chunk; the pass stops after the deepest read; {per_call}",
        "store_on_device": "as store, with output_device='model' (rows left on the model's device, uncopied)",
        "hf_body": "AutoModelForCausalLM.model(input_ids, attention_mask, output_hidden_states=True, use_cache=False), "
                   f"no LM head; hidden_states[l + 1] read for each layer{depth}; {per_call}",
        "hf_body_to_host": "hf_body, then each read layer's hidden state copied to the host with .cpu() "
                           "(BOS included, as HF returns it)",
        "transformer_lens": f"TransformerBridge.boot_transformers(hf_model=<a copy>).run_with_cache(ids, "
                            f"names_filter=[blocks.l.hook_resid_post], stop_at_layer={tl_stop})",
        "nnsight": "LanguageModel(<a copy of the CausalLM>).trace(ids, attention_mask=mask): .save() on "
                   "model.layers[l].output for each read layer, then tracer.stop() (nothing after the deepest read "
                   "runs: no final norm, no LM head)",
        "limit": "AutoModelForCausalLM.model(input_ids, attention_mask, use_cache=False): the bare body, no hidden "
                 f"states, no hooks, no LM head{depth}",
        "hf_with_head": "the previous anchor, for reference only (never counted): AutoModelForCausalLM(input_ids, "
                        "attention_mask, output_hidden_states=True), which unembeds every position through the "
                        "LM head",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--random-weights", action="store_true", help="Gemma 3 270M config with random weights")
    parser.add_argument("--batch", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (BOS first)")
    parser.add_argument("--batches-per-call", type=int, default=None,
                        help="batches per timed call, so per-call setup is amortised as in a stream "
                             "(default: 4 on the CPU, 16 on a GPU)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layer", type=int, default=None, help="capture only this layer's resid_post")
    parser.add_argument("--dtype", default="float32", help="model dtype, and the store's storage dtype")
    parser.add_argument("--memory-mb", type=float, default=None,
                        help="the store's memory_mb (default: one batch of rows, so a chunk is one batch)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--skip", default="", help="comma-separated methods to skip")
    parser.add_argument("--with-head", action="store_true",
                        help="also time the previous anchor (CausalLM with its LM head), for reference")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.batches_per_call is None:
        args.batches_per_call = 16 if device.type == "cuda" else 4
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)

    fresh, tok = load_copies(args, device, dtype)
    hf = fresh()
    model = interlayer.load_model(hf, tokenizer=tok)
    n_layers = model.n_layers
    layers = list(range(n_layers)) if args.layer is None else [model.check_layer(args.layer)]
    depth = None if args.layer is None else args.layer + 1
    torch.manual_seed(1)
    n_seq = args.batch * args.batches_per_call
    ids = torch.randint(10, min(20000, model.vocab_size), (n_seq, args.seq))
    ids[:, 0] = tok.bos_token_id if tok.bos_token_id is not None else 2
    ids_host = ids.clone()
    ids = ids.to(device)
    mask = torch.ones_like(ids)
    batches = [(ids[i:i + args.batch], mask[i:i + args.batch]) for i in range(0, n_seq, args.batch)]
    n_tokens = n_seq * (args.seq - 1)  # the BOS positions, which the store drops, are not counted
    sites = [f"resid_post.{l}" for l in layers]
    memory_mb = args.memory_mb
    if memory_mb is None:  # one batch of rows (plus half a row, against rounding): one chunk per batch
        memory_mb = (args.batch * (args.seq - 1) + 0.5) * row_bytes(model, len(sites), dtype, False) / 2**20

    def run_store(output_device="cpu"):
        for chunk in stream(model, ids_host, sites, batch_size=args.batch, memory_mb=memory_mb,
                            output_device=output_device, progress=False, **{STORAGE_DTYPE: args.dtype}):
            out = chunk  # a streaming consumer keeps the latest chunk only
        return out

    def run_store_on_device():
        return run_store("model")

    def run_hf_body(to_host=False):
        with truncated_body(hf, depth) as body:
            for batch_ids, batch_mask in batches:
                states = body(input_ids=batch_ids, attention_mask=batch_mask, output_hidden_states=True,
                              use_cache=False).hidden_states
                out = [states[l + 1].cpu() if to_host else states[l + 1] for l in layers]
        return out

    def run_hf_body_to_host():
        return run_hf_body(to_host=True)

    def run_limit():
        with truncated_body(hf, depth) as body:
            for batch_ids, batch_mask in batches:
                out = body(input_ids=batch_ids, attention_mask=batch_mask, use_cache=False).last_hidden_state
        return out

    def run_with_head():
        for batch_ids, batch_mask in batches:
            out = hf(input_ids=batch_ids, attention_mask=batch_mask, output_hidden_states=True, use_cache=False)
        return [out.hidden_states[l + 1] for l in layers]

    # transformers installs its hidden-state hooks on the blocks present at the first such call:
    # make that a full-depth one, so truncating the body later leaves every block hooked.
    hf.base_model(input_ids=ids[:1, :4], output_hidden_states=True, use_cache=False)
    methods = {"store": run_store, "store_on_device": run_store_on_device, "hf_body": run_hf_body,
               "hf_body_to_host": run_hf_body_to_host, "limit": run_limit}
    if args.with_head:
        methods["hf_with_head"] = run_with_head
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
            for batch_ids, batch_mask in batches:
                saved = []
                with nn_model.trace(batch_ids, attention_mask=batch_mask) as tracer:
                    for l in layers:
                        saved.append(nn_model.model.layers[l].output.save())
                    tracer.stop()  # nnsight's early exit: nothing after the deepest read runs
            return [s[0] if isinstance(s, tuple) else s for s in saved]

        methods["nnsight"] = run_nnsight
    tl_stop = max(layers) + 1
    if "transformer_lens" not in skip:
        try:
            from transformer_lens.model_bridge import TransformerBridge

            tl_hf = fresh()
            bridge = TransformerBridge.boot_transformers("google/gemma-3-270m", hf_model=tl_hf, tokenizer=tok)
        except Exception as err:  # noqa: BLE001
            notes["transformer_lens"] = f"not run: {type(err).__name__}: {err}"
            skip.add("transformer_lens")
    tl_unembeds = None
    if "transformer_lens" not in skip:
        names = [f"blocks.{l}.hook_resid_post" for l in layers]
        # Does the bridge still run the LM head? A hook on its copy's head counts the calls.
        head_calls = []
        handle = tl_hf.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
        try:
            bridge.run_with_cache(ids[:1, :8], names_filter=names, stop_at_layer=tl_stop)
        except Exception as err:  # noqa: BLE001 - report and fall back
            notes["transformer_lens"] = f"stop_at_layer={tl_stop} failed ({type(err).__name__}); full forward"
            tl_stop = None
            bridge.run_with_cache(ids[:1, :8], names_filter=names)
        finally:
            handle.remove()
        tl_unembeds = bool(head_calls)
        if tl_unembeds:
            notes["transformer_lens_unembedding"] = (
                f"computed (a forward hook on the bridge's LM head fired during run_with_cache(stop_at_layer="
                f"{tl_stop})): TransformerBridge.run_with_cache installs its stop hook only for stop_at_layer < "
                "len(blocks) (transformer_lens/model_bridge/bridge.py), so at the last block the final norm and the "
                "unembedding run; not the same work, so not counted in best_anchor")
        else:
            notes["transformer_lens_unembedding"] = (
                f"not computed (a forward hook on the bridge's LM head did not fire): stop_at_layer={tl_stop} raises "
                f"at blocks.{tl_stop}.hook_in, before the later blocks, the final norm and the unembedding")

        def run_tl():
            for batch_ids, _ in batches:
                cache = bridge.run_with_cache(batch_ids, names_filter=names, stop_at_layer=tl_stop)[1]
            return [cache[name] for name in names]

        methods["transformer_lens"] = run_tl
    methods = {k: v for k, v in methods.items() if k not in skip}

    # Correctness before speed: every method must see the same activations (the last batch of a call).
    first = n_seq - args.batch

    def grids(acts):
        """The store's rows of the last batch as ``[batch, seq - 1, d]`` per site (BOS dropped)."""
        seq, pos = acts.meta["sequence"], acts.meta["position"]
        keep = seq >= first
        out = []
        for site in sites:
            grid = torch.zeros(args.batch, args.seq - 1, model.d_model)
            grid[seq[keep] - first, pos[keep] - 1] = acts[site][keep].float().cpu()
            out.append(grid)
        return out

    store_rows = grids(run_store())
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    errors = {}
    for name, fn in methods.items():
        if name in ("store", "limit"):
            continue
        got = fn()
        got = grids(got) if name == "store_on_device" else [g[:, 1:] for g in got]
        worst = 0.0
        for i, l in enumerate(layers):
            if name == "hf_with_head" or (name.startswith("hf_body") and depth is None):
                if l == n_layers - 1:  # HF's last hidden state is after the final norm
                    continue
            worst = max(worst, relative_error(got[i], store_rows[i]))
        errors[name] = worst
    for name in ("hf_body", "store_on_device"):
        assert errors.get(name, 0.0) <= tolerance, \
            f"the store differs from {name}: relative error {errors[name]:.2e} > {tolerance:.0e}"
    run_limit()  # warm-up (the check above ran every other method once)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {k: [] for k in methods}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    tps = {k: n_tokens / statistics.median(v) for k, v in times.items()}
    peaks = {}
    for name, fn in methods.items():  # the same call, one method at a time
        with Peak(device) as peak:
            fn()
        peaks[name] = round(peak.mb, 1)

    fair = {k: tps[k] for k in ("hf_body", "transformer_lens", "nnsight") if k in tps}
    if "transformer_lens" in fair and tl_unembeds:
        del fair["transformer_lens"]  # it unembeds every position: not the same work
    best = max(fair, key=fair.get) if fair else None

    def ratio(a, b, digits=3):
        return round(tps[a] / tps[b], digits) if a in tps and b in tps else None

    result = {
        "device": device_name(device),
        "model": args.model + (" (random weights, same config)" if args.random_weights else ""),
        "batch": [args.batch, args.seq], "batches_per_call": args.batches_per_call,
        "tokens_per_call": n_tokens, "tokens_counted": "without the BOS positions (the store drops them)",
        "dtype": args.dtype, "store_memory_mb": round(memory_mb, 2),
        "layers": "all" if args.layer is None else [args.layer],
        "repeats": args.repeats,
        "tps": {k: round(v, 1) for k, v in tps.items()},
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "store_tps": round(tps["store"], 1),
        "store_on_device_tps": round(tps["store_on_device"], 1) if "store_on_device" in tps else None,
        "hf_body_tps": round(tps["hf_body"], 1) if "hf_body" in tps else None,
        "hf_body_to_host_tps": round(tps["hf_body_to_host"], 1) if "hf_body_to_host" in tps else None,
        "transformer_lens_tps": round(tps["transformer_lens"], 1) if "transformer_lens" in tps else None,
        "nnsight_tps": round(tps["nnsight"], 1) if "nnsight" in tps else None,
        "limit_tps": round(tps["limit"], 1) if "limit" in tps else None,
        "best_anchor": best,
        "store_vs_best_anchor": round(tps["store"] / fair[best], 3) if best else None,
        "store_on_device_vs_best_anchor": (round(tps["store_on_device"] / fair[best], 3)
                                           if best and "store_on_device" in tps else None),
        "store_vs_hf_body_to_host": ratio("store", "hf_body_to_host"),
        "store_on_device_vs_hf_body": ratio("store_on_device", "hf_body"),
        "store_vs_limit": ratio("store", "limit"),
        "store_on_device_vs_limit": ratio("store_on_device", "limit"),
        "transformer_lens_vs_hf_body": ratio("transformer_lens", "hf_body"),
        "transformer_lens_computes_unembedding": tl_unembeds,
        "peak_mem_mb": peaks,
        "store_peak_mem_mb": peaks.get("store"),
        "hf_body_peak_mem_mb": peaks.get("hf_body"),
        "peak_mem_note": ("extra memory above the start during one call of each method, "
                          + ("CUDA allocator (device memory only: the host rows of 'store' and 'hf_body_to_host' "
                             "are not counted)" if device.type == "cuda" else "process RSS")),
        "max_rel_err_vs_store": errors,
        "store_vs_hf_max_rel_err": errors.get("hf_body"),
        "anchors": {k: v for k, v in anchor_configs(args, layers, n_layers, tl_stop).items() if k in methods},
        "notes": notes,
    }
    print(f"{'method':18s}{'tokens/s':>12s}{'median s':>10s}{'vs store':>10s}{'peak MiB':>10s}")
    for name in methods:
        print(f"{name:18s}{tps[name]:12.1f}{statistics.median(times[name]):10.3f}{tps['store'] / tps[name]:9.2f}x"
              f"{peaks[name]:10.1f}")
    print(f"device {result['device']}; max relative error against the store: {errors}")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
