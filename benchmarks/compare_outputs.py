"""Compares two output folders of benchmarks/same_numbers.sh: every number in every JSON, CSV and
safetensors file, within a relative tolerance (timings, paths and versions skipped).

    python benchmarks/compare_outputs.py BEFORE AFTER [RTOL]
"""
import csv, json, math, re, sys
from pathlib import Path
import numpy as np

A, B = Path(sys.argv[1]), Path(sys.argv[2])
RTOL, ATOL = float(sys.argv[3]) if len(sys.argv) > 3 else 1e-5, 1e-7
SKIP = re.compile(r"(seconds|_s$|time|wall|elapsed|date|created|path|^activations$|eval_data|^out$|^data$|version|commit|forward_calls|calls|host|python|torch)", re.I)
stats = {"numbers": 0, "strings": 0, "max_rel": 0.0, "bad": []}

def cmp(a, b, where):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if SKIP.search(str(k)):
                continue
            if k not in a or k not in b:
                stats["bad"].append(f"{where}.{k}: only in {'after' if k not in a else 'before'}"); continue
            cmp(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            stats["bad"].append(f"{where}: length {len(a)} vs {len(b)}"); return
        for i, (x, y) in enumerate(zip(a, b)):
            cmp(x, y, f"{where}[{i}]")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        stats["numbers"] += 1
        if (isinstance(a, float) and math.isnan(a)) and (isinstance(b, float) and math.isnan(b)):
            return
        d = abs(a - b); rel = d / max(abs(a), abs(b), 1e-30)
        if d > ATOL: stats["max_rel"] = max(stats["max_rel"], rel)
        if d > ATOL + RTOL * max(abs(a), abs(b)):
            stats["bad"].append(f"{where}: {a} vs {b}")
    else:
        stats["strings"] += 1
        if a != b and not (isinstance(a, str) and ("/tmp/" in a or "/work/" in a)):
            stats["bad"].append(f"{where}: {str(a)[:80]!r} vs {str(b)[:80]!r}")

def num(v):
    try: return float(v)
    except ValueError: return v

for f in sorted(A.rglob("*")):
    rel = f.relative_to(A)
    if rel.parts[0] == "acts" and f.suffix != ".json":
        continue
    g = B / rel
    if f.is_dir():
        continue
    if not g.exists():
        stats["bad"].append(f"{rel}: missing after"); continue
    if f.suffix == ".json":
        cmp(json.loads(f.read_text()), json.loads(g.read_text()), str(rel))
    elif f.suffix == ".csv":
        ra = [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f.open())]
        rb = [{k: num(v) for k, v in r.items()} for r in csv.DictReader(g.open())]
        cmp(ra, rb, str(rel))
    elif f.suffix == ".safetensors":
        from safetensors.numpy import load_file
        ta, tb = load_file(str(f)), load_file(str(g))
        if set(ta) != set(tb):
            stats["bad"].append(f"{rel}: tensor names differ {sorted(set(ta) ^ set(tb))[:5]}")
        for k in sorted(set(ta) & set(tb)):
            x, y = ta[k].astype(np.float64), tb[k].astype(np.float64)
            stats["numbers"] += x.size
            d = np.abs(x - y).max() if x.size else 0.0
            scale = max(np.abs(x).max() if x.size else 0, 1e-30)
            stats["max_rel"] = max(stats["max_rel"], float(d / scale))
            if not np.allclose(x, y, rtol=RTOL, atol=1e-6 * scale):
                stats["bad"].append(f"{rel}:{k}: max |diff| {d:.3g} (scale {scale:.3g})")
print(f"compared {stats['numbers']} numbers and {stats['strings']} strings; max relative difference {stats['max_rel']:.3g}; "
      f"{len(stats['bad'])} mismatches (rtol {RTOL})")
for line in stats["bad"][:60]:
    print("  ", line)
