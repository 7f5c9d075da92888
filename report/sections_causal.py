"""The report's causal section: ROME's causal tracing of packaged facts (``interlayer.tracing``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import ReportContext, SectionResult
from .summary import Panel

KIND_NAMES = {"resid": "the residual stream", "mlp": "the MLP outputs", "attn": "the attention outputs"}


def tracing_section(ctx: ReportContext) -> SectionResult:
    from interlayer.tracing import causal_trace, load_facts, packaged_facts

    p = ctx.profile
    facts = load_facts(ctx.facts) if ctx.facts is not None else packaged_facts(p.trace_scan)
    source = f"the facts of {ctx.facts}" if ctx.facts is not None else "known_1000 facts (packaged)"
    trace = causal_trace(ctx.model, facts, n=p.trace_facts, kinds=("resid", "mlp", "attn"), samples=p.trace_samples,
                         positions=p.trace_positions, progress=False)
    payload = trace.to_json()
    numbers = {k: v for k, v in payload.items() if k != "facts"}
    numbers["data"] = source
    numbers["facts"] = [{k: f[k] for k in ("prompt", "subject", "target", "clean", "corrupted")}
                        for f in payload["facts"]]
    known = (f"Data: {source}. Of the first {trace.scanned} the model knows {len(trace.facts)} (its top prediction "
             "is the answer's first token); only those are traced, as in ROME's code.")
    if not trace.facts:
        return SectionResult(numbers, [known, "With no known fact there is nothing to trace."])
    clean = float(np.mean([f.clean for f in trace.facts]))
    corrupted = float(np.mean([f.corrupted for f in trace.facts]))
    prose = [known, f"Noise of {trace.noise:g} x the subjects' embedding std ({trace.std:.3g}, {trace.samples} samples) "
                    f"drops the answer's mean probability from {clean:.3f} to {corrupted:.3f}."]
    if trace.positions == "key":
        prose.append("Only the first and last subject token and the last token were restored (positions=key); "
                     "`interlayer trace` restores every position, as ROME does.")
    if len(trace.facts) < 20:
        prose.append(f"With {len(trace.facts)} facts the averages are a smoke test, not a measurement: see the intervals.")
    frame = trace.to_frame()
    panels = []
    for kind in trace.kinds:
        band = trace.band(kind)
        prose.append(f"Restoring {KIND_NAMES[kind]} at the last subject token recovers most at layer "
                     f"{band['peak_layer']} (mean indirect effect {band['peak_effect']:+.3f}; layers {band['first']}-"
                     f"{band['last']} at half of it or more).")
        panels.append(_panel(ctx, trace, kind, band, source))
    return SectionResult(numbers, prose, [trace.plot()], {"causal_trace": frame}, panels)


def _panel(ctx: ReportContext, trace: Any, kind: str, band: dict[str, Any], source: str) -> Panel:
    summary = trace.summary(kind)
    last = summary[summary.group == "last subject token"]
    window = f" (windows of {trace.window})" if kind != "resid" else ""
    sentence = (f"Restoring {KIND_NAMES[kind]}{window} at the last subject token recovers the answer most at layer "
                f"{band['peak_layer']} (relative depth {ctx.depth(band['peak_layer']):.2f}; layers {band['first']}-"
                f"{band['last']} at half the peak or more; {len(trace.facts)} facts).")
    return Panel(f"Causal tracing: {kind}", "indirect effect on P(answer), last subject token", ctx.model.n_layers,
                 [int(l) for l in last.layer], last.effect.tolist(), last.low.tolist(), last.high.tolist(),
                 f"95% bootstrap over {len(trace.facts)} facts", int(band["peak_layer"]), "peak of the band", sentence,
                 reference=0.0, reference_label="no effect", data=source)
