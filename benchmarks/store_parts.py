"""Parts of the store benchmark (benchmarks/store.py) that stand apart from its round-robin:
the random-weight model configurations, the pinned-copy anchor, the store's host work
without the model, the compile helpers, the host-copy micro-test and the line fit."""

from __future__ import annotations

import inspect
import statistics
import time
from typing import Any, Callable

import torch

# Llama-3.1-8B's published config (meta-llama/Llama-3.1-8B, config.json), written here so that
# nothing is fetched: the GPU suite times its body with random weights.
LLAMA_31_8B = {
    "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "initializer_range": 0.02,
    "bos_token_id": 128000, "eos_token_id": 128001, "tie_word_embeddings": False, "attention_bias": False,
    "mlp_bias": False, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}
# The same architecture at toy size (2 blocks of width 64), for smoke runs on a CPU only.
LLAMA_TINY = {**LLAMA_31_8B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "bos_token_id": 2, "eos_token_id": 1}

CONFIGS = ("gemma-3-270m", "llama-3.1-8b", "llama-tiny")
"""``--config`` choices: random weights of Gemma 3 270M's config, of Llama-3.1-8B's (a GPU
only: 16 GB in bf16) or of a toy Llama for smoke runs."""

TL_NAMES = {"gemma-3-270m": "google/gemma-3-270m", "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
            "llama-tiny": "meta-llama/Llama-3.1-8B"}
"""The name TransformerLens's bridge is booted with for each config (it picks its adapter by it)."""


def gemma_config():
    """Gemma 3 270M's config (random weights are drawn on the CPU: 268M parameters)."""
    from transformers import Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                              max_position_embeddings=32768, query_pre_attn_scalar=256,
                              layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3)
    config.architectures = ["Gemma3ForCausalLM"]
    return config


def llama_config(values: dict[str, Any]):
    """A LlamaConfig from ``values``; the llama3 rope scaling is passed as ``rope_parameters``
    where this transformers takes it, else as ``rope_theta`` and ``rope_scaling``."""
    from transformers import LlamaConfig

    values = dict(values)
    theta, scaling = values.pop("rope_theta"), values.pop("rope_scaling")
    if "rope_parameters" in inspect.signature(LlamaConfig.__init__).parameters:
        values["rope_parameters"] = {**scaling, "rope_theta": theta}
    else:
        values.update(rope_theta=theta, rope_scaling=scaling)
    config = LlamaConfig(**values)
    config.architectures = ["LlamaForCausalLM"]
    return config


def materialise(config, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A CausalLM of ``config`` with random weights made on ``device`` directly: built on the
    meta device (no memory, no initialisation), given storage with ``to_empty``, then every
    matrix drawn from N(0, initializer_range^2) by a generator on ``device`` seeded with
    ``seed`` (so two calls give the same weights) and every vector (the RMSNorm weights) set
    to 1. The rotary embeddings' buffers, which the meta build never computed, are rebuilt
    on ``device``. No 8B parameters are initialised on the CPU."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.fill_(1.0)
            else:
                param.normal_(0.0, std, generator=generator)
        for name, module in list(model.named_modules()):
            if name and type(module).__name__.endswith("RotaryEmbedding"):
                parent, _, leaf = name.rpartition(".")
                with torch.device(device):
                    rebuilt = type(module)(config=module.config if hasattr(module, "config") else config)
                setattr(model.get_submodule(parent) if parent else model, leaf, rebuilt)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"tensors left on the meta device: {left[:5]}")
    return model.eval()


class PinnedCopies:
    """The strongest fair host-copy anchor for the HF body: each batch's hidden states copied
    ``non_blocking`` on a side CUDA stream into pinned host buffers allocated once (two sets,
    used in turn: batch n's copies overlap batch n + 1's forward), the consumer handed set n
    once its event has completed."""

    def __init__(self) -> None:
        self.stream = torch.cuda.Stream()
        self.sets: list[list[torch.Tensor]] = [[], []]
        self.events: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def copy(self, states: list[torch.Tensor]) -> None:
        """Start copying ``states`` (on the current stream's device) into the next set."""
        slot = self.turn % 2
        self.turn += 1
        if self.events[slot] is not None:
            self.events[slot].synchronize()  # the consumer is done with this set
        if [t.shape for t in self.sets[slot]] != [s.shape for s in states]:
            self.sets[slot] = [torch.empty(s.shape, dtype=s.dtype, pin_memory=True) for s in states]
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            for buffer, state in zip(self.sets[slot], states):
                buffer.copy_(state, non_blocking=True)
                state.record_stream(self.stream)  # the allocator keeps it until the copy is done
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[slot] = event

    def finish(self) -> list[torch.Tensor]:
        """Wait for the last set's copies; return it."""
        slot = (self.turn - 1) % 2
        self.events[slot].synchronize()
        return self.sets[slot]


def prep_only_fn(model, ids_host: torch.Tensor, batch_size: int) -> Callable[[], Any]:
    """The store's per-batch host work without the model: planning (``_plan``), padding
    (``make_batch``) and the row selection (``Selector``, on the model's device), as
    ``stream`` does them for the same inputs. Raises if the store's internals changed."""
    from interlayer.store.collect import _plan
    from interlayer.store.inputs import make_batch
    from interlayer.store.options import CollectOptions
    from interlayer.store.selection import Selector

    opts = CollectOptions(batch_size=batch_size, progress=False)

    def run():
        batches, _ = _plan(model, ids_host, opts)
        for group in batches:
            batch = make_batch(group, model.pad_token_id, opts.padding_side, model.bos_token_id)
            selector = Selector(opts.select, batch, model.device, opts.positions)
        return selector

    return run


def compile_support() -> str | None:
    """How this interlayer compiles the body (``"ModelAdapter.compile()"`` or
    ``"load_model(compile=True)"``), or ``None`` where it cannot."""
    import interlayer

    if callable(getattr(interlayer.ModelAdapter, "compile", None)):
        return "ModelAdapter.compile()"
    if "compile" in inspect.signature(interlayer.load_model).parameters:
        return "load_model(compile=True)"
    return None


def compiled_adapter(hf, tok, mode: str | None):
    """An adapter over ``hf`` (a copy of its own) with the opt-in compile, as
    :func:`compile_support` found it."""
    import interlayer

    how = compile_support()
    if how == "ModelAdapter.compile()":
        model = interlayer.load_model(hf, tokenizer=tok)
        kwargs = {"mode": mode} if mode and "mode" in inspect.signature(model.compile).parameters else {}
        out = model.compile(**kwargs)
        return out if isinstance(out, interlayer.ModelAdapter) else model
    return interlayer.load_model(hf, tokenizer=tok, compile=True)


def dynamo_counters() -> dict[str, dict[str, int]]:
    """A snapshot of ``torch._dynamo``'s counters (frames compiled, graphs, graph breaks)."""
    try:
        from torch._dynamo.utils import counters
    except Exception:  # noqa: BLE001 - no dynamo in this torch
        return {}
    return {group: {str(k): int(v) for k, v in c.items()} for group, c in counters.items()}


def counters_delta(before: dict, after: dict) -> dict[str, dict[str, int]]:
    """What grew between two :func:`dynamo_counters` snapshots (recompiles show here)."""
    out = {}
    for group, values in after.items():
        grown = {k: v - before.get(group, {}).get(k, 0) for k, v in values.items()}
        grown = {k: v for k, v in grown.items() if v}
        if grown:
            out[group] = grown
    return out


def shallow_truncated(body: torch.nn.Module, depth: int | None) -> torch.nn.Module:
    """``body`` itself, or for ``depth`` a shallow copy of it that runs only its first ``depth``
    blocks and skips the final norm: the same parameters, its own module dict, so that a
    ``torch.compile`` of it sees one fixed module (no swap per call, no recompile)."""
    import copy

    if depth is None:
        return body
    view = copy.copy(body)
    view._modules = dict(body._modules)
    view.layers = torch.nn.ModuleList(list(body.layers)[:depth])
    view.norm = torch.nn.Identity()
    return view


def host_copy_test(megabytes: float = 376.8, repeats: int = 5, blocks: int = 18) -> dict[str, Any]:
    """Device-to-host bandwidth of one ``megabytes`` bf16 tensor (the store's all-layer
    chunk of Gemma 3 270M at 32 x 512) into (1) fresh pageable memory each time (``.to("cpu")``),
    (1b) the same in ``blocks`` pieces (as the store's per-site copies), (2) one reused
    pageable tensor (touched once beforehand), (3) pinned memory allocated once,
    ``non_blocking`` then synchronised. Medians over ``repeats`` after one warm-up. CUDA only."""
    n = int(megabytes * 1e6) // 2
    src = torch.randn(n, device="cuda").to(torch.bfloat16)
    pieces = list(src.chunk(blocks))
    reused = torch.empty(n, dtype=torch.bfloat16).fill_(0)
    pinned = torch.empty(n, dtype=torch.bfloat16, pin_memory=True)

    def fresh():
        return src.to("cpu")

    def fresh_blocks():
        return [p.to("cpu") for p in pieces]

    def pageable():
        reused.copy_(src)

    def pin():
        pinned.copy_(src, non_blocking=True)
        torch.cuda.synchronize()

    cases = {"fresh_pageable": fresh, f"fresh_pageable_{blocks}_blocks": fresh_blocks,
             "reused_pageable": pageable, "pinned": pin}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for rep in range(repeats + 1):
        for name, fn in cases.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = fn()
            torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
            del out
    nbytes = n * 2
    assert torch.equal(pinned, reused), "the pinned and pageable copies differ"
    return {"bytes": nbytes, "repeats": repeats,
            "gb_per_s": {k: round(nbytes / statistics.median(v) / 1e9, 2) for k, v in times.items()},
            "median_ms": {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()},
            "cases": {"fresh_pageable": "src.to('cpu'): a new pageable tensor per copy, freed after",
                      f"fresh_pageable_{blocks}_blocks": f"the same in {blocks} pieces (one per site, as the store "
                                                         "copied before issue 25)",
                      "reused_pageable": "dst.copy_(src) into one pageable tensor allocated and touched once",
                      "pinned": "dst.copy_(src, non_blocking=True) into pinned memory allocated once, then "
                                "torch.cuda.synchronize()"}}


def fit_line(points: list[tuple[float, float]]) -> dict[str, float]:
    """Least squares ``t = a + b * tokens`` through ``(tokens, seconds)`` points: ``a`` the
    fixed cost per call (ms), ``b`` the cost per token (µs), and the fit's worst relative
    residual."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(a + b * x - y) / y for x, y in points) if points else 0.0
    return {"a_ms_per_call": round(a * 1e3, 3), "b_us_per_token": round(b * 1e6, 5),
            "tokens_per_s_asymptotic": round(1 / b, 1) if b > 0 else None, "worst_rel_residual": round(worst, 3)}
