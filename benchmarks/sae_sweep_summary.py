"""The README's view of a finished SAE sweep: its table as markdown and each
architecture's metrics at matched L0 (:func:`interlayer.saes.sweep.matched_l0`).

    python benchmarks/sae_sweep_summary.py SWEEP_DIR [--json OUT.json] [--html OUT.html]

Reads ``SWEEP_DIR/pareto.csv`` (what ``interlayer sae sweep`` wrote); computes nothing
new beyond the interpolation at matched L0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from interlayer.saes.sweep import matched_l0, pareto_figure

SHOWN = ("member", "l0", "explained_variance", "nmse", "ce_loss_recovered", "kl_sae", "mse_standardized",
         "train_mse_last", "dead_frac", "dense_frac", "eps_lbo_median", "pareto_ev")
METRICS = ("explained_variance", "ce_loss_recovered", "nmse")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return "yes" if value else ""
    if isinstance(value, float):
        if pd.isna(value):
            return ""
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(str(c) for c in frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--html", type=Path, help="the sweep's figure, small (plotly.js from its CDN when opened)")
    args = parser.parse_args()
    path = args.sweep / "pareto.csv"
    if not path.is_file():
        print(f"no pareto.csv in {args.sweep}", file=sys.stderr)
        return 2
    table = pd.read_csv(path)
    print(markdown(table[list(SHOWN)]))
    matched = {}
    for metric in METRICS:
        frame = matched_l0(table, metric).reset_index()
        matched[metric] = frame.to_dict(orient="records")
        print(f"\n{metric} at matched L0\n")
        print(markdown(frame))
    if args.json:
        args.json.write_text(json.dumps(matched, indent=1, default=str))
    if args.html:
        sweep = json.loads((args.sweep / "sweep.json").read_text())
        title = f"SAE sweep: {sweep['model']} {sweep['site']}, {sweep['latents']} latents"
        pareto_figure(table, title).write_html(args.html, include_plotlyjs="cdn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
