"""Does ROME's picture of factual recall hold on the embedded models? Reads the JSON of
``interlayer trace`` runs and prints, per model, the questions of issue 28:

* the **early site**: does restoring the MLP outputs (windows of 10 layers) at the last
  subject token recover the answer most in the first half of the model, and more than
  attention there?
* the **late site**: does attention at the last token matter more than at the last
  subject token?
* where the residual stream's last-subject-token effect peaks, and its band.

Each is computed from the per-fact indirect effects with bootstrap intervals over facts
(``CausalTrace.summary``). The runs (one model process at a time)::

    interlayer trace --model gemma-3-270m --n 20 --positions key --samples 10 \\
        --out benchmarks/results/tracing_gemma-3-270m.json  # --figures F.html: the heatmaps
    python benchmarks/tracing_findings.py benchmarks/results/tracing_*.json \\
        --out benchmarks/results/tracing_findings.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from interlayer.tracing import CausalTrace
from interlayer.tracing.causal_trace import TOKEN_GROUPS


def _at(summary, group: str) -> "object":
    return summary[summary.group == group].reset_index(drop=True)


def findings(trace: CausalTrace) -> dict:
    """The early-site and late-site questions for one traced model, from its numbers."""
    L = trace.n_layers
    out: dict = {"model": trace.model, "n_layers": L, "facts": len(trace.facts), "scanned": trace.scanned,
                 "samples": trace.samples, "positions": trace.positions, "window": trace.window,
                 "clean_mean": float(np.mean([f.clean for f in trace.facts])),
                 "corrupted_mean": float(np.mean([f.corrupted for f in trace.facts]))}
    for kind in trace.kinds:
        out[f"{kind}_band"] = trace.band(kind)
    if {"mlp", "attn"} <= set(trace.kinds):
        mlp = _at(trace.summary("mlp"), "last subject token")
        attn = _at(trace.summary("attn"), "last subject token")
        peak = int(mlp.effect.idxmax())
        out["early_site"] = {
            "mlp_peak_layer": peak, "mlp_peak_relative_depth": (peak + 1) / L,
            "mlp_peak_effect": float(mlp.effect[peak]), "mlp_peak_interval": [float(mlp.low[peak]), float(mlp.high[peak])],
            "attn_effect_there": float(attn.effect[peak]),
            "attn_interval_there": [float(attn.low[peak]), float(attn.high[peak])],
            "in_first_half": peak < L / 2,
            "mlp_above_attn": bool(mlp.low[peak] > attn.high[peak]),
            "holds": bool(peak < L / 2 and mlp.low[peak] > attn.high[peak] and mlp.low[peak] > 0),
        }
        attn_last = _at(trace.summary("attn"), "last token")
        late = int(attn_last.effect.idxmax())
        out["late_site"] = {
            "attn_last_token_peak_layer": late, "attn_last_token_peak_relative_depth": (late + 1) / L,
            "attn_last_token_peak_effect": float(attn_last.effect[late]),
            "attn_last_subject_token_max": float(attn.effect.max()),
            "holds": bool(attn_last.low[late] > attn.effect.max() and late >= peak),
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    for path in args.traces:
        trace = CausalTrace.from_json(json.loads(path.read_text()))
        if not trace.facts:
            print(f"{path}: no fact traced")
            continue
        rows.append({"source": str(path), **findings(trace)})
        print(json.dumps(rows[-1], indent=1))
    if args.out:
        args.out.write_text(json.dumps({"groups": list(TOKEN_GROUPS), "models": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
