"""Tables generated from files in the repository, filled into a page where it says
``<!-- generated: NAME -->``:

* ``benchmark-results``: every ``benchmarks/results/*.json`` that names its device, with
  the script that writes it, its headline ratios and the commit that last wrote it;
* ``sae-sweep``: the Gemma ``resid_post.8`` SAE sweep, from
  ``benchmarks/results/sae_gemma_sweep_pareto.csv``;
* ``knowledge-qa``: the QA table of the knowledge-layer findings, from
  ``benchmarks/results/knowledge_findings_<model>.json``;
* ``scale-memory``: the peak memory of every command at real model sizes, from
  ``benchmarks/results/scale_cpu_*.json`` (``benchmarks/scale.py``)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- generated: ([a-z-]+) -->")
# A headline number is a comparison: its key (split at "_") holds one of these words.
HEADLINE_WORDS = {"speedup", "vs", "over", "ratio"}
# ... unless it is a setting, an error measure or a bound, not a result.
NOT_HEADLINE = re.compile(r"(^max_perplexity_ratio$|_err$|_diff|_tol)")
# Results without a comparison: the numbers to show instead.
FALLBACK = ("best_cell.shift", "best_cell.random_shift", "wall_clock_seconds", "peak_rss_mb", "forward_calls")
# The script (under benchmarks/) or command that writes each result file, by file name.
SCRIPTS = (
    (r"^gpu_h200_store", "`store.py` (by `gpu_random_weights.sh`)"),
    (r"^gpu_h200_sae", "`sae.py` (by `gpu_random_weights.sh`)"),
    (r"^gpu_.*_suite\.json$", "`gpu_suite.sh`"),
    (r"^gpu_.*_topafa", "`topafa.py` (by `gpu_suite.sh`)"),
    (r"^gpu_.*_(store|copy)", "`store.py` (by `gpu_suite.sh`)"),
    (r"^gpu_.*_sae", "`sae.py` (by `gpu_suite.sh`)"),
    (r"^cache_cpu", "`cache.py` (by `python -m benchmarks`)"),
    (r"^topafa", "`topafa.py` (by `python -m benchmarks`)"),
    (r"^sae_step", "`sae.py` (by `python -m benchmarks`)"),
    (r"^store", "`store.py` (by `run_cpu_fair.sh`)"),
    (r"^sae_sweep_eval\.json$", "`sae_sweep_eval.py`"),
    (r"^sae(_selection_random_init)?\.json$", "`sae.py`"),
    (r"^mexa\.json$", "`mexa.py` (by `run_cpu_fair.sh`)"),
    (r"^steering\.json$", "`steering.py` (by `run_cpu_fair.sh`)"),
    (r"^steering_", "`steering_findings.py`"),
    (r"^knowledge_.*_(closed|open)\.json$", "`knowledge.py`"),
    (r"^foundation\.json$", "`foundation.py`"),
    (r"^distributed", "`distributed.py`"),
    (r"^scale_", "`scale.py`"),
)


def _commit(path: Path) -> str:
    """The short hash of the last commit that touched ``path`` (``-`` outside git)."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"`{out}`" if out else "uncommitted"


def _flat(value, prefix: str = ""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flat(item, f"{prefix}{key}.")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield prefix[:-1], value


def _number(value: float) -> str:
    """Three significant digits, trailing zeros kept (``1.00``, ``0.962``, ``11.0``);
    large values whole (``1,976``)."""
    if not isinstance(value, float):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:#.3g}".rstrip(".")


def _is_headline(key: str) -> bool:
    last = key.rsplit(".", 1)[-1]
    return bool(HEADLINE_WORDS & set(last.split("_"))) and not NOT_HEADLINE.search(last)


def headline(record: dict, limit: int = 8) -> str:
    """The record's comparisons (keys naming a speed-up, a ``_vs_``/``_over_`` comparison or
    a ratio), one per line; where the record names its ``best_anchor``, the comparisons
    with it say which it was. Records without any show their :data:`FALLBACK` numbers."""
    flat = list(_flat(record))
    found = [(k, v) for k, v in flat if _is_headline(k)]
    if not found:
        found = [(k, v) for k, v in flat if k in FALLBACK]
    anchor = record.get("best_anchor")
    shown = []
    for key, value in found[:limit]:
        named = f" ({anchor})" if anchor and "best_anchor" in key else ""
        shown.append(f"{key}{named} = {_number(value)}")
    if len(found) > limit:
        shown.append(f"(+{len(found) - limit} more in the file)")
    return "<br>".join(shown) or "-"


def _script(name: str, record: dict) -> str:
    if isinstance(record.get("command"), str):
        words = record["command"].split()
        cut = next((i for i, w in enumerate(words) if w.startswith("-")), len(words))
        return "`" + " ".join(words[:cut]) + "`"
    for pattern, script in SCRIPTS:
        if re.search(pattern, name):
            return script
    return "-"


def benchmark_results() -> str:
    """One row per result file in ``benchmarks/results/`` that names its device."""
    rows = ["| result file, written by | device, model | headline numbers | commit |",
            "| --- | --- | --- | --- |"]
    for path in sorted(RESULTS.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict) or "device" not in record:
            continue
        device = str(record["device"]).replace("|", "/")
        config = record.get("config") if isinstance(record.get("config"), dict) else {}
        model = str(record.get("model") or config.get("model") or "").replace("|", "/")
        where = f"{device}<br>{model}" if model else device
        rows.append(f"| `{path.name}`<br>by {_script(path.name, record)} | {where} | {headline(record)} "
                    f"| {_commit(path)} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ findings tables
SWEEP_ARCHS = ("topk", "batchtopk", "jumprelu", "relu", "topafa")


def _percent(value: str) -> str:
    return f"{100 * float(value):.1f}%"


def _l0(value: str) -> str:
    x = float(value)
    return f"{x:.1f}" if x < 100 else f"{x:.0f}"


def sae_sweep() -> str:
    """The Gemma ``resid_post.8`` sweep, one row per member, grouped by architecture in
    order of L0 (``benchmarks/results/sae_gemma_sweep_pareto.csv``)."""
    path = RESULTS / "sae_gemma_sweep_pareto.csv"
    with path.open(encoding="utf-8", newline="") as handle:
        members = list(csv.DictReader(handle))
    members.sort(key=lambda m: (SWEEP_ARCHS.index(m["arch"]) if m["arch"] in SWEEP_ARCHS else len(SWEEP_ARCHS),
                                float(m["l0"])))
    rows = ["| member | L0 | explained variance | NMSE | CE loss recovered | KL (nats) | authors' MSE "
            "| silent on the eval tokens | silent over the last 1M training tokens | median ε_LBO |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in members:
        rows.append(f"| {m['member']} | {_l0(m['l0'])} | {float(m['explained_variance']):.3f} | {float(m['nmse']):.4f} "
                    f"| {float(m['ce_loss_recovered']):.3f} | {float(m['kl_sae']):.2f} "
                    f"| {float(m['mse_standardized']):.4f} | {_percent(m['dead_frac'])} "
                    f"| {_percent(m['dead_frac_train'])} | {float(m['eps_lbo_median']):.1e} |")
    return "\n".join(rows) + f"\n\nGenerated from `benchmarks/results/{path.name}` (commit {_commit(path)})."


QA_MODELS = (("gemma-3-270m", "Gemma 3 270M"), ("smollm2-135m-instruct", "SmolLM2-135M-Instruct"))
QA_ROWS = (("NQ closed book", "nq", "closed_book"), ("NQ gold passage", "nq", "open_book"),
           ("NQ gold + 4 noise passages", "nq_noise4", "open_book"), ("known (closed book)", "known", "closed_book"))
QA_METHODS = ("greedy", "lfd", "dola", "lfd-random")


def _pct(value: float) -> str:
    return "0" if value == 0 else f"{100 * value:.1f}"


def knowledge_qa() -> str:
    """Exact match and answer-contained (%) per setting and decoding, for both models
    (``benchmarks/results/knowledge_findings_<model>.json``, part ``qa``)."""
    qa = {m: json.loads((RESULTS / f"knowledge_findings_{m}.json").read_text(encoding="utf-8"))["qa"]
          for m, _ in QA_MODELS}
    names = {"greedy": "greedy", "lfd": "LFD", "dola": "DoLa", "lfd-random": "LFD-random"}
    rows = ["| | " + " | ".join(f"{label} | " for _, label in QA_MODELS) + "|",
            "| --- | --- | --- | --- | --- |",
            "| setting: " + " / ".join(names[m] for m in QA_METHODS) + " | EM | contained | EM | contained |"]
    for label, run, setting in QA_ROWS:
        cells = []
        for model, _ in QA_MODELS:
            scores = {r["method"]: r for r in qa[model][run]["results"] if r["setting"] == setting}
            for metric in ("exact_match", "contained"):
                cells.append(" / ".join(_pct(scores[m][metric]) for m in QA_METHODS))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    files = ", ".join(f"`knowledge_findings_{m}.json` ({_commit(RESULTS / f'knowledge_findings_{m}.json')})"
                      for m, _ in QA_MODELS)
    return "\n".join(rows) + f"\n\nGenerated from {files} in `benchmarks/results/`."


def scale_memory() -> str:
    """The peak RSS of every command at real model sizes, from
    ``benchmarks/results/scale_cpu_*.json`` (the table of ``benchmarks/scale.py --table``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("interlayer_bench_scale", ROOT / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.table([str(p) for p in sorted(RESULTS.glob("scale_cpu_*.json"))])


GENERATORS = {"benchmark-results": benchmark_results, "sae-sweep": sae_sweep, "knowledge-qa": knowledge_qa,
              "scale-memory": scale_memory}


def fill(markdown: str) -> str:
    """Replace every ``<!-- generated: NAME -->`` marker; an unknown name is an error."""
    def one(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated table {name!r}; known: {', '.join(sorted(GENERATORS))}")
        return GENERATORS[name]()

    return MARKER.sub(one, markdown)
