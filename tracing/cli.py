"""``interlayer trace``: causal tracing of facts (ROME), from the store's activation patching."""

from __future__ import annotations

from interlayer.cli.registry import check_outputs, command, say, show, write_figure, write_json_output
from interlayer.errors import InterlayerError, choices

from .causal_trace import KINDS, causal_trace
from .config import TraceConfig
from .facts import load_facts, packaged_facts


@command("trace", TraceConfig)
def run_trace(cfg: TraceConfig) -> int:
    kinds = cfg.parsed("kinds")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InterlayerError(f"--kinds: unknown kind {unknown[0] if unknown else '(none)'!r}; valid choices: "
                              f"{choices(KINDS)}")
    facts = load_facts(cfg.facts) if cfg.facts else packaged_facts()  # bad facts fail before the model loads
    check_outputs(cfg.out, (".json",), cfg.figures)
    model = cfg.load()
    result = causal_trace(model, facts, n=cfg.n, kinds=kinds, window=cfg.window, noise=cfg.noise,
                          samples=cfg.samples, seed=cfg.seed, known_only=not cfg.all_facts, positions=cfg.positions,
                          progress=not cfg.no_progress)
    payload = result.to_json()
    say(f"traced {len(result.facts)} fact(s) of {result.scanned} read"
        + ("" if cfg.all_facts else " (only those the model knows)"))
    if result.facts:
        frame = result.to_frame()
        last = frame[frame.group == "last subject token"]
        show(last.to_string(index=False, float_format=lambda v: f"{v:.4f}"), payload)
        for band in payload["bands"]:
            say(f"{band['kind']}: restoring the last subject token recovers most at layer {band['peak_layer']} "
                f"(effect {band['peak_effect']:.4f}; layers {band['first']}-{band['last']} at half of it or more)")
    write_json_output(cfg.out, payload)
    write_figure(cfg.figures, result.plot() if cfg.figures and result.facts else None)
    return 0
