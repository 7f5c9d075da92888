"""The report's causal section: ROME's causal tracing of packaged facts (``interlayer.tracing``)."""

from __future__ import annotations

import numpy as np

from .base import ReportContext, SectionResult

KIND_NAMES = {"resid": "the residual stream", "mlp": "the MLP outputs", "attn": "the attention outputs"}


def tracing_section(ctx: ReportContext) -> SectionResult:
    from interlayer.tracing import causal_trace, load_facts, packaged_facts

    p = ctx.profile
    facts = load_facts(ctx.facts) if ctx.facts is not None else packaged_facts(p.trace_scan)
    source = f"the facts of {ctx.facts}" if ctx.facts is not None else "known_1000 facts (packaged)"
    trace = causal_trace(ctx.model, facts, n=p.trace_facts, kinds=("resid", "mlp", "attn"), samples=p.trace_samples,
                         progress=False)
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
    curves = {}
    frame = trace.to_frame()
    for kind in trace.kinds:
        band = trace.band(kind)
        prose.append(f"Restoring {KIND_NAMES[kind]} at the last subject token recovers most at layer "
                     f"{band['peak_layer']} (mean indirect effect {band['peak_effect']:+.3f}; layers {band['first']}-"
                     f"{band['last']} at half of it or more).")
        last = frame[(frame.kind == kind) & (frame.group == "last subject token")]
        top = max(float(last.effect.max()), 1e-12)
        curves[f"tracing: {kind}, last subject token (÷ max)"] = ([ctx.depth(int(l)) for l in last.layer],
                                                                  [max(float(v), 0.0) / top for v in last.effect])
    return SectionResult(numbers, prose, [trace.plot()], {"causal_trace": frame}, curves)
