"""Put a rerun of one ``benchmarks/scale.py`` task into a results file, with the report's
per-section times read from its output, and recompute the headlines::

    python -m benchmarks.scale_merge benchmarks/results/scale_cpu_gemma-2-2b.json /tmp/rerun.json [--task report_all]
"""

from __future__ import annotations

import argparse
import json
import re

from benchmarks.scale import headlines

SECTION_LINE = re.compile(r"^(\w+)\s+(ok|failed)\s+([\d.]+) s\s+(\d+) forward calls", re.M)


def merge(target: str, new: str, task_name: str = "report_all") -> dict:
    data = json.load(open(target))
    task = json.load(open(new))["tasks"][task_name]
    sections = {m.group(1): {"status": m.group(2), "seconds": float(m.group(3)), "forward_calls": int(m.group(4))}
                for m in SECTION_LINE.finditer(task.get("output_tail", ""))}
    if sections:
        task["sections"] = dict(sorted(sections.items()))
    data["tasks"][task_name] = task
    for key in [k for k in data if k.endswith("_ratio")]:
        del data[key]
    head = headlines(data["tasks"], data["bound_mb"])
    out: dict = {}
    for key, value in data.items():
        out[key] = value
        if key == "model":
            out.update(head)
    with open(target, "w") as f:
        f.write(json.dumps(out, indent=2) + "\n")
    return {"headlines": head, "peak_rss_mb": task["peak_rss_mb"], "within_bound": task["within_bound"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target")
    parser.add_argument("new")
    parser.add_argument("--task", default="report_all")
    args = parser.parse_args()
    print(merge(args.target, args.new, args.task))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
