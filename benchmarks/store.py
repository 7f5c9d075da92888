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
  (c') ``hf_body_pinned`` (CUDA only): (b), its hidden states copied ``non_blocking`` on a
      side stream into two sets of pinned buffers allocated once and used in turn, so
      batch n's copies overlap batch n + 1's forward: the strongest fair host anchor;
  (d) TransformerLens ``TransformerBridge.run_with_cache`` with ``names_filter`` and
      ``stop_at_layer`` (see the notes in the JSON: at every layer the bridge cannot stop
      before its unembedding);
  (e) nnsight ``trace`` with ``.save()`` on every read layer's output and ``tracer.stop()``
      after the deepest;
  (f) the limit: the bare decoder body, no hidden states, no hooks, no LM head
      (truncated like (b) for ``--layer``);
  (g) ``prep_only``: the store's per-batch host work without the model (planning,
      ``make_batch``, ``Selector``), reported as a fraction of the limit's time;
  (h) with ``--compile`` (where this interlayer has the opt-in compile): ``store_compiled``
      (on the device) and ``store_compiled_to_host`` on a copy whose adapter compiled its
      blocks, ``limit_compiled`` (the bare body of that copy: the same compiled blocks)
      and ``limit_compiled_body`` (``torch.compile`` of the whole bare body of the eager
      copy). Compile warm-up is excluded; what dynamo compiled during the timed rounds
      (recompiles) is recorded.

``--with-head`` adds the previous, unfair anchor (the CausalLM with its 262k-token LM
head, ``output_hidden_states=True``) for reference; it never counts as an anchor.
Tokens are counted without the BOS positions, which the store drops. Each anchor gets
its own copy of the weights (TransformerLens swaps modules in place; nnsight wraps
them). Peak memory is measured for every method on the same call. Correctness comes
first: the store's rows must equal the HF hidden states. Writes
benchmarks/results/store.json (or --out); the JSON's ``anchors`` names each method's
configuration. Not a timed test.

``--fit`` times only ``--methods`` (default store_on_device, store, limit) at every batch
of ``--fit-batches`` x ``--seq`` and every ``--fit-calls`` batches per call, and fits
t = a + b * tokens per method (a: fixed cost per call, b: cost per token). ``--copy-test``
runs only the device-to-host copy micro-test (CUDA).

    python benchmarks/store.py [--model gemma-3-270m] [--batch 8] [--seq 128] [--repeats 3] [--batches-per-call 4]
    python benchmarks/store.py --config gemma-3-270m   # the same config, random weights (no model package needed)
    python benchmarks/store.py --config llama-3.1-8b --device cuda --dtype bfloat16 --batch 8 --seq 512
    python benchmarks/store.py --config gemma-3-270m --fit --fit-batches 8,32,128 --fit-calls 1,16 --seq 512
    python benchmarks/store.py --copy-test --out benchmarks/results/gpu_h200_copy.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import inspect
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

import interlayer
from interlayer.store.collect import stream
from interlayer.store.capture import row_bytes
from interlayer.model.loading import ensure_converted

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Peak, device_name, relative_error, stand_in_tokenizer, write_result  # noqa: E402
import store_parts as parts  # noqa: E402

# The storage-dtype keyword of stream() (``dtype`` before it was renamed ``storage_dtype``).
STORAGE_DTYPE = "storage_dtype" if "storage_dtype" in inspect.signature(stream).parameters else "dtype"
COMPILED = ("store_compiled", "store_compiled_to_host", "limit_compiled", "limit_compiled_body")
NOT_ANCHORS = ("prep_only", "hf_with_head", *COMPILED)


def load_copies(args, device, dtype):
    """Independent copies of the same weights (a function returning a new one), and a tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.config == "gemma-3-270m":
        config = parts.gemma_config()
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(config, dtype=dtype)  # drawn once, on the CPU

        def fresh():
            return copy.deepcopy(base).to(device).eval()

        return fresh, stand_in_tokenizer(config.vocab_size, tempfile.mkdtemp(prefix="interlayer-tok-"))
    if args.config is not None:  # the Llama configs: made on the device (8B parameters are never drawn on a CPU)
        config = parts.llama_config(parts.LLAMA_31_8B if args.config == "llama-3.1-8b" else parts.LLAMA_TINY)

        def fresh():
            return parts.materialise(config, device, dtype, seed=0)

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


def anchor_configs(args, layers: list[int], tl_stop: int | None) -> dict[str, str]:
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
        "hf_body_pinned": "hf_body, then each read layer's hidden state copied with non_blocking=True on a side CUDA "
                          "stream into pinned host buffers allocated once (two sets used in turn, so a batch's copies "
                          "overlap the next batch's forward); the call ends when the last copies are done",
        "transformer_lens": f"TransformerBridge.boot_transformers(hf_model=<a copy>).run_with_cache(ids, "
                            f"names_filter=[blocks.l.hook_resid_post], stop_at_layer={tl_stop})",
        "nnsight": "LanguageModel(<a copy of the CausalLM>).trace(ids, attention_mask=mask): .save() on "
                   "model.layers[l].output for each read layer, then tracer.stop() (nothing after the deepest read "
                   "runs: no final norm, no LM head)",
        "limit": "AutoModelForCausalLM.model(input_ids, attention_mask, use_cache=False): the bare body, no hidden "
                 f"states, no hooks, no LM head{depth}",
        "prep_only": "the store's host work per call without the model: interlayer.store.collect._plan, make_batch "
                     "and Selector (on the model's device) for every batch, as stream() runs them; not an anchor",
        "store_compiled": f"as store_on_device, on a copy whose adapter compiled its blocks "
                          f"({parts.compile_support()}, mode={args.compile_mode}); compile warm-up excluded",
        "store_compiled_to_host": "as store (rows to the host), on the compiled copy",
        "limit_compiled": "the limit on the compiled copy: the bare body running the adapter's compiled blocks",
        "limit_compiled_body": f"torch.compile(the bare body{' truncated to blocks 0..' + str(args.layer) if one else ''},"
                               f" mode={args.compile_mode}) of the eager copy: one graph for the whole body",
        "hf_with_head": "the previous anchor, for reference only (never counted): AutoModelForCausalLM(input_ids, "
                        "attention_mask, output_hidden_states=True), which unembeds every position through the "
                        "LM head",
    }


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--config", default=None, choices=parts.CONFIGS,
                        help="random weights of this config instead of --model's (llama-3.1-8b: made on the GPU; "
                             "llama-tiny: a toy Llama for smoke runs)")
    parser.add_argument("--random-weights", action="store_true", help="the same as --config gemma-3-270m")
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
    parser.add_argument("--methods", default="", help="comma-separated methods to run (default: every one available)")
    parser.add_argument("--skip", default="", help="comma-separated methods to skip")
    parser.add_argument("--with-head", action="store_true",
                        help="also time the previous anchor (CausalLM with its LM head), for reference")
    parser.add_argument("--compile", action="store_true",
                        help="also time the compiled store and limits (where interlayer has the opt-in compile)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode (default: torch's)")
    parser.add_argument("--fit", action="store_true", help="the fit t = a + b * tokens over --fit-batches x --fit-calls")
    parser.add_argument("--fit-batches", default="8,32,128")
    parser.add_argument("--fit-calls", default="1,16", help="batches per call in the fit")
    parser.add_argument("--copy-test", action="store_true", help="only the device-to-host copy micro-test (CUDA)")
    parser.add_argument("--copy-mb", type=float, default=376.8, help="the copy test's size (the all-layer chunk)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "store.json"))
    args = parser.parse_args(argv)
    if args.random_weights and args.config is None:
        args.config = "gemma-3-270m"
    return args


class Bench:
    """The models and anchors, loaded once; :meth:`inputs` and :meth:`methods` are per shape."""

    def __init__(self, args, device: torch.device, dtype: torch.dtype):
        self.args, self.device, self.dtype = args, device, dtype
        self.fresh, self.tok = load_copies(args, device, dtype)
        self.hf = self.fresh()
        self.model = interlayer.load_model(self.hf, tokenizer=self.tok)
        self.n_layers = self.model.n_layers
        self.layers = list(range(self.n_layers)) if args.layer is None else [self.model.check_layer(args.layer)]
        self.depth = None if args.layer is None else args.layer + 1
        self.sites = [f"resid_post.{l}" for l in self.layers]
        self.notes: dict[str, str] = {}
        self.wanted = set(filter(None, args.methods.split(",")))
        self.skip = set(filter(None, args.skip.split(",")))
        self.tl_stop, self.tl_unembeds, self.nn_model, self.bridge = max(self.layers) + 1, None, None, None
        self.compiled_model = self.compiled_body = None
        # transformers installs its hidden-state hooks on the blocks present at the first such call:
        # make that a full-depth one, so truncating the body later leaves every block hooked.
        self.hf.base_model(input_ids=torch.full((1, 4), 5, device=device), output_hidden_states=True, use_cache=False)

    def want(self, name: str) -> bool:
        """Whether ``name`` is to run (``--methods``, ``--skip``)."""
        return name not in self.skip and (not self.wanted or name in self.wanted)

    def inputs(self, batch: int, seq: int, per_call: int) -> dict:
        """Seeded ids for one call: ``per_call`` batches of ``batch`` x ``seq``, BOS first."""
        torch.manual_seed(1)
        n_seq = batch * per_call
        ids = torch.randint(10, min(20000, self.model.vocab_size), (n_seq, seq))
        ids[:, 0] = self.tok.bos_token_id if self.tok.bos_token_id is not None else 2
        ids_host, ids = ids.clone(), ids.to(self.device)
        mask = torch.ones_like(ids)
        memory_mb = self.args.memory_mb
        if memory_mb is None:  # one batch of rows (plus half a row, against rounding): one chunk per batch
            memory_mb = (batch * (seq - 1) + 0.5) * row_bytes(self.model, len(self.sites), self.dtype, False) / 2**20
        return {"batch": batch, "seq": seq, "n_seq": n_seq, "ids_host": ids_host, "ids": ids, "memory_mb": memory_mb,
                "batches": [(ids[i:i + batch], mask[i:i + batch]) for i in range(0, n_seq, batch)],
                "n_tokens": n_seq * (seq - 1)}  # the BOS positions, which the store drops, are not counted

    def load_anchors(self) -> None:
        """nnsight and TransformerLens, each on a copy of its own; failures become notes."""
        if self.want("nnsight"):
            try:
                from nnsight import LanguageModel

                self.nn_model = LanguageModel(self.fresh(), tokenizer=self.tok)
            except Exception as err:  # noqa: BLE001 - an anchor that cannot run is reported, not fatal
                self.notes["nnsight"] = f"not run: {type(err).__name__}: {err}"
        if self.want("transformer_lens"):
            try:
                from transformer_lens.model_bridge import TransformerBridge

                tl_hf = self.fresh()
                name = parts.TL_NAMES.get(self.args.config or "gemma-3-270m", "google/gemma-3-270m")
                self.bridge = TransformerBridge.boot_transformers(name, hf_model=tl_hf, tokenizer=self.tok)
                self._probe_tl(tl_hf)
            except Exception as err:  # noqa: BLE001
                self.notes["transformer_lens"] = f"not run: {type(err).__name__}: {err}"
                self.bridge = None

    def _probe_tl(self, tl_hf) -> None:
        """Whether the bridge still runs the LM head: a hook on its copy's head counts the calls."""
        names = [f"blocks.{l}.hook_resid_post" for l in self.layers]
        head_calls = []
        handle = tl_hf.get_output_embeddings().register_forward_hook(lambda *_: head_calls.append(1))
        probe = torch.full((1, 8), 5, device=self.device)
        try:
            self.bridge.run_with_cache(probe, names_filter=names, stop_at_layer=self.tl_stop)
        except Exception as err:  # noqa: BLE001 - report and fall back
            self.notes["transformer_lens"] = f"stop_at_layer={self.tl_stop} failed ({type(err).__name__}); full forward"
            self.tl_stop = None
            self.bridge.run_with_cache(probe, names_filter=names)
        finally:
            handle.remove()
        self.tl_unembeds = bool(head_calls)
        if self.tl_unembeds:
            self.notes["transformer_lens_unembedding"] = (
                f"computed (a forward hook on the bridge's LM head fired during run_with_cache(stop_at_layer="
                f"{self.tl_stop})): TransformerBridge.run_with_cache installs its stop hook only for stop_at_layer < "
                "len(blocks) (transformer_lens/model_bridge/bridge.py), so at the last block the final norm and the "
                "unembedding run; not the same work, so not counted in best_anchor")
        else:
            self.notes["transformer_lens_unembedding"] = (
                f"not computed (a forward hook on the bridge's LM head did not fire): stop_at_layer={self.tl_stop} "
                f"raises at blocks.{self.tl_stop}.hook_in, before the later blocks, the final norm and the unembedding")

    def load_compiled(self) -> None:
        """The compiled copy (the adapter's opt-in compile) and the whole-body compile of the eager copy."""
        how = parts.compile_support()
        if how is None:
            self.notes["compile"] = ("not available: this interlayer has neither ModelAdapter.compile() nor "
                                     "load_model(compile=...)")
        elif any(self.want(m) for m in ("store_compiled", "store_compiled_to_host", "limit_compiled")):
            try:
                self.compiled_model = parts.compiled_adapter(self.fresh(), self.tok, self.args.compile_mode)
            except Exception as err:  # noqa: BLE001
                self.notes["compile"] = f"the adapter's compile failed: {type(err).__name__}: {err}"
        if self.want("limit_compiled_body"):
            body = parts.shallow_truncated(self.hf.base_model, self.depth)
            self.compiled_body = torch.compile(body, mode=self.args.compile_mode)

    def methods(self, inp: dict, filtered: bool = True) -> dict:
        """Every method to time on the call ``inp``, by name (those ``--methods`` and
        ``--skip`` leave, unless not ``filtered``)."""
        args, layers, depth, hf, sites = self.args, self.layers, self.depth, self.hf, self.sites
        batches = inp["batches"]

        def run_store(output_device="cpu", model=None):
            for chunk in stream(self.model if model is None else model, inp["ids_host"], sites, batch_size=inp["batch"],
                                memory_mb=inp["memory_mb"], output_device=output_device, progress=False,
                                **{STORAGE_DTYPE: args.dtype}):
                out = chunk  # a streaming consumer keeps the latest chunk only
            return out

        def run_hf_body(to_host=False, pinned=None):
            with truncated_body(hf, depth) as body:
                for batch_ids, batch_mask in batches:
                    states = body(input_ids=batch_ids, attention_mask=batch_mask, output_hidden_states=True,
                                  use_cache=False).hidden_states
                    out = [states[l + 1] for l in layers]
                    if pinned is not None:
                        pinned.copy(out)
                    elif to_host:
                        out = [s.cpu() for s in out]
            return pinned.finish() if pinned is not None else out

        def run_limit(module=None, other=None):
            with truncated_body(hf if other is None else other, depth) as body:
                for batch_ids, batch_mask in batches:
                    out = (body if module is None else module)(input_ids=batch_ids, attention_mask=batch_mask,
                                           use_cache=False).last_hidden_state
            return out

        def run_with_head():
            for batch_ids, batch_mask in batches:
                out = hf(input_ids=batch_ids, attention_mask=batch_mask, output_hidden_states=True, use_cache=False)
            return [out.hidden_states[l + 1] for l in layers]

        methods = {"store": run_store, "store_on_device": lambda: run_store("model"), "hf_body": run_hf_body,
                   "hf_body_to_host": lambda: run_hf_body(to_host=True), "limit": run_limit}
        if self.device.type == "cuda":
            pinned = parts.PinnedCopies()
            methods["hf_body_pinned"] = lambda: run_hf_body(pinned=pinned)
        else:
            self.notes["hf_body_pinned"] = "CUDA only (pinned memory and side streams)"
        try:
            methods["prep_only"] = parts.prep_only_fn(self.model, inp["ids_host"], inp["batch"])
        except Exception as err:  # noqa: BLE001 - the store's internals moved
            self.notes["prep_only"] = f"not available: {type(err).__name__}: {err}"
        if args.with_head:
            methods["hf_with_head"] = run_with_head
        methods.update(self._anchor_methods(batches))
        if self.compiled_model is not None:
            methods["store_compiled"] = lambda: run_store("model", self.compiled_model)
            methods["store_compiled_to_host"] = lambda: run_store("cpu", self.compiled_model)
            methods["limit_compiled"] = lambda: run_limit(other=self.compiled_model.model)
        if self.compiled_body is not None:
            methods["limit_compiled_body"] = lambda: run_limit(module=self.compiled_body)
        return {k: v for k, v in methods.items() if self.want(k) or not filtered}

    def _anchor_methods(self, batches) -> dict:
        methods = {}
        if self.nn_model is not None:
            nn_model, layers = self.nn_model, self.layers

            def run_nnsight():
                for batch_ids, batch_mask in batches:
                    saved = []
                    with nn_model.trace(batch_ids, attention_mask=batch_mask) as tracer:
                        for l in layers:
                            saved.append(nn_model.model.layers[l].output.save())
                        tracer.stop()  # nnsight's early exit: nothing after the deepest read runs
                return [s[0] if isinstance(s, tuple) else s for s in saved]

            methods["nnsight"] = run_nnsight
        if self.bridge is not None:
            names = [f"blocks.{l}.hook_resid_post" for l in self.layers]

            def run_tl():
                for batch_ids, _ in batches:
                    cache = self.bridge.run_with_cache(batch_ids, names_filter=names, stop_at_layer=self.tl_stop)[1]
                return [cache[name] for name in names]

            methods["transformer_lens"] = run_tl
        return methods


def check(bench: Bench, inp: dict, methods: dict) -> dict[str, float]:
    """Correctness before speed: every method's activations of the call's last batch against
    the store's (relative error); the store must equal the HF body (and its on-device path)."""
    args, first = bench.args, inp["n_seq"] - inp["batch"]

    def grids(acts):
        """The store's rows of the last batch as ``[batch, seq - 1, d]`` per site (BOS dropped)."""
        seq, pos = acts.meta["sequence"], acts.meta["position"]
        keep = seq >= first
        out = []
        for site in bench.sites:
            grid = torch.zeros(inp["batch"], inp["seq"] - 1, bench.model.d_model)
            grid[seq[keep] - first, pos[keep] - 1] = acts[site][keep].float().cpu()
            out.append(grid)
        return out

    store_rows = grids((methods.get("store") or bench.methods(inp, filtered=False)["store"])())
    errors = {}
    for name, fn in methods.items():
        if name in ("store", "prep_only") or name.startswith("limit"):
            continue
        got = fn()
        got = grids(got) if name.startswith("store") else [g[:, 1:] for g in got]
        worst = 0.0
        for i, l in enumerate(bench.layers):
            if (name == "hf_with_head" or name.startswith("hf_body")) and bench.depth is None and l == bench.n_layers - 1:
                continue  # HF's last hidden state is after the final norm
            worst = max(worst, relative_error(got[i], store_rows[i]))
        errors[name] = worst
    tolerance = 1e-4 if bench.dtype == torch.float32 else 2e-2
    for name in ("hf_body", "store_on_device"):
        assert errors.get(name, 0.0) <= tolerance, \
            f"the store differs from {name}: relative error {errors[name]:.2e} > {tolerance:.0e}"
    loose = 1e-3 if bench.dtype == torch.float32 else 5e-2  # compiled kernels reorder float sums
    for name in ("store_compiled", "store_compiled_to_host"):
        if errors.get(name, 0.0) > loose:
            bench.notes[name] = f"dropped: relative error {errors[name]:.2e} against the eager store > {loose:.0e}"
            del methods[name]
    return errors


def time_methods(methods: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of each method, ``repeats`` rounds, round-robin, synchronised."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {k: [] for k in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return times


def run_fit(bench: Bench, args) -> dict:
    """The fit t = a + b * tokens per method over every batch size and batches per call."""
    if not bench.wanted:
        bench.wanted = {"store_on_device", "store", "limit"}
    points: dict[str, list] = {}
    table = []
    for batch in [int(b) for b in args.fit_batches.split(",")]:
        for per_call in [int(c) for c in args.fit_calls.split(",")]:
            inp = bench.inputs(batch, args.seq, per_call)
            methods = bench.methods(inp)
            time_methods(methods, 1, bench.device)  # warm-up at this shape
            med = {k: statistics.median(v) for k, v in time_methods(methods, args.repeats, bench.device).items()}
            for name, seconds in med.items():
                points.setdefault(name, []).append((inp["n_tokens"], seconds))
            table.append({"batch": [batch, args.seq], "batches_per_call": per_call, "tokens": inp["n_tokens"],
                          "median_s": {k: round(v, 5) for k, v in med.items()},
                          "tps": {k: round(inp["n_tokens"] / v, 1) for k, v in med.items()},
                          "store_on_device_vs_limit": (round(med["limit"] / med["store_on_device"], 3)
                                                       if {"limit", "store_on_device"} <= set(med) else None)})
            print(table[-1])
    return {"fit": {k: parts.fit_line(v) for k, v in points.items()}, "points": table,
            "fit_note": "least squares t = a + b * tokens over the points (a: fixed ms per call, b: us per token)"}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.copy_test:
        if not torch.cuda.is_available():
            print("the copy test needs CUDA; nothing run")
            return
        result = {"device": device_name(torch.device("cuda")), **parts.host_copy_test(args.copy_mb, args.repeats)}
        print(result["gb_per_s"])
        write_result(args.out, result)
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.config == "llama-3.1-8b" and device.type != "cuda":
        raise SystemExit("--config llama-3.1-8b runs on a GPU only (16 GB of weights per copy); use llama-tiny here")
    if args.batches_per_call is None:
        args.batches_per_call = 16 if device.type == "cuda" else 4
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    bench = Bench(args, device, dtype)
    head = {"device": device_name(device), "model": describe(args), "dtype": args.dtype,
            "layers": "all" if args.layer is None else [args.layer], "repeats": args.repeats}
    if args.fit:
        write_result(args.out, {**head, "seq": args.seq, **run_fit(bench, args), "notes": bench.notes})
        return
    bench.load_anchors()
    if args.compile:
        bench.load_compiled()
    inp = bench.inputs(args.batch, args.seq, args.batches_per_call)
    methods = bench.methods(inp)
    errors = check(bench, inp, methods)
    for name in methods:  # warm-up (compiles the compiled methods), outside the counters and the timing
        for _ in range(2 if name in COMPILED else 1 if name.startswith("limit") or name == "prep_only" else 0):
            methods[name]()
    before = parts.dynamo_counters()
    times = time_methods(methods, args.repeats, device)
    compiled_during = parts.counters_delta(before, parts.dynamo_counters())
    peaks = {}
    for name, fn in methods.items():  # the same call, one method at a time
        with Peak(device) as peak:
            fn()
        peaks[name] = round(peak.mb, 1)
    result = summarise(bench, inp, times, peaks, errors, head)
    if args.compile:
        result["compile"] = {"support": parts.compile_support(), "mode": args.compile_mode,
                             "dynamo_counters_during_timing": compiled_during,
                             "recompiled_during_timing": bool(compiled_during.get("stats", {}).get("unique_graphs"))}
    print(f"{'method':24s}{'tokens/s':>12s}{'median s':>10s}{'vs store':>10s}{'peak MiB':>10s}")
    tps = result["tps"]
    for name in methods:
        rate = tps.get(name, inp["n_tokens"] / result["median_s"][name])
        print(f"{name:24s}{rate:12.1f}{result['median_s'][name]:10.4f}"
              f"{tps.get('store', rate) / rate:9.2f}x{peaks[name]:10.1f}")
    print(f"device {result['device']}; max relative error against the store: {errors}")
    write_result(args.out, result)


def describe(args) -> str:
    """The model the result names."""
    if args.config is None:
        return args.model
    return f"{args.config} config (random weights)" if args.config != "gemma-3-270m" else \
        "gemma-3-270m (random weights, same config)"


def summarise(bench: Bench, inp: dict, times: dict, peaks: dict, errors: dict, head: dict) -> dict:
    """The result JSON: rates, ratios, memory, errors, the anchors named."""
    args, device = bench.args, bench.device
    med = {k: statistics.median(v) for k, v in times.items()}
    tps = {k: inp["n_tokens"] / v for k, v in med.items() if k != "prep_only"}
    fair = {k: tps[k] for k in ("hf_body", "transformer_lens", "nnsight") if k in tps}
    if "transformer_lens" in fair and bench.tl_unembeds:
        del fair["transformer_lens"]  # it unembeds every position: not the same work
    best = max(fair, key=fair.get) if fair else None

    def ratio(a, b, digits=3):
        return round(tps[a] / tps[b], digits) if a in tps and b in tps else None

    rates = {f"{k}_tps": round(tps[k], 1) if k in tps else None
             for k in ("store", "store_on_device", "hf_body", "hf_body_to_host", "hf_body_pinned", "transformer_lens",
                       "nnsight", "limit", "store_compiled", "limit_compiled", "limit_compiled_body")}
    ratios = {f"{a}_vs_{b}": ratio(a, b) for a, b in (
        ("store", "hf_body_to_host"), ("store", "hf_body_pinned"), ("store_on_device", "hf_body"),
        ("store", "limit"), ("store_on_device", "limit"), ("store", "store_on_device"),
        ("transformer_lens", "hf_body"), ("limit_compiled", "limit"), ("limit_compiled_body", "limit"),
        ("store_compiled", "limit_compiled"), ("store_compiled", "limit_compiled_body"), ("store_compiled", "limit"),
        ("store_compiled_to_host", "store_compiled"))}
    return {
        **head, "batch": [args.batch, args.seq], "batches_per_call": args.batches_per_call,
        "tokens_per_call": inp["n_tokens"], "tokens_counted": "without the BOS positions (the store drops them)",
        "store_memory_mb": round(inp["memory_mb"], 2),
        "tps": {k: round(v, 1) for k, v in tps.items()},
        "median_s": {k: round(v, 5) for k, v in med.items()},
        **rates, "best_anchor": best,
        "store_vs_best_anchor": round(tps["store"] / fair[best], 3) if best and "store" in tps else None,
        "store_on_device_vs_best_anchor": (round(tps["store_on_device"] / fair[best], 3)
                                           if best and "store_on_device" in tps else None),
        **ratios,
        "prep_only_fraction_of_limit": (round(med["prep_only"] / med["limit"], 4)
                                        if {"prep_only", "limit"} <= set(med) else None),
        "transformer_lens_computes_unembedding": bench.tl_unembeds,
        "peak_mem_mb": peaks, "store_peak_mem_mb": peaks.get("store"), "hf_body_peak_mem_mb": peaks.get("hf_body"),
        "peak_mem_note": ("extra memory above the start during one call of each method, "
                          + ("CUDA allocator (device memory only: the host rows of 'store', 'hf_body_to_host' and "
                             "'hf_body_pinned' are not counted)" if device.type == "cuda" else "process RSS")),
        "max_rel_err_vs_store": errors, "store_vs_hf_max_rel_err": errors.get("hf_body"),
        "anchors": {k: v for k, v in anchor_configs(args, bench.layers, bench.tl_stop).items() if k in times},
        "not_anchors": [k for k in NOT_ANCHORS if k in times],
        "notes": bench.notes,
    }


if __name__ == "__main__":
    main()
