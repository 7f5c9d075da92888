"""Where a command's memory peaks: runs an ``interlayer`` command in this process with a
thread that samples the RSS every 10 ms and keeps the main thread's stack at the highest
sample, and a timeline of every change of more than ``--step-mb``. Printed to stderr at
exit (the command's own output is unchanged). This is how the peaks in
``benchmarks/scale.py``'s results were traced to their lines. Run it alone on the machine::

    flock /tmp/interlayer-torch.lock python benchmarks/peak_trace.py -- \\
        report --model CHECKPOINT --dtype bfloat16 --profile quick --skip sae --out /tmp/r.html
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable


def _where(frame, depth: int) -> str:
    top = traceback.extract_stack(frame)[-depth:] if frame is not None else []
    return " < ".join(f"{os.path.basename(f.filename)}:{f.lineno}:{f.name}" for f in reversed(top))


def start(step_mb: float = 150.0, interval_s: float = 0.01, stack_lines: int = 12) -> Callable[[], None]:
    """Start sampling this process; the report is printed to stderr at exit (and by the
    function returned, which prints it now)."""
    import psutil

    main_id, t0 = threading.get_ident(), time.perf_counter()
    peak: dict = {"rss": 0, "at": 0.0, "stack": ""}
    timeline: list[str] = []

    def sample() -> None:
        process, last = psutil.Process(os.getpid()), 0
        while True:
            rss = process.memory_info().rss
            frame = sys._current_frames().get(main_id)
            if rss > peak["rss"] + 4 * 2**20:  # where it first rose to the peak, not a later few-KiB bump
                peak.update(rss=rss, at=time.perf_counter() - t0,
                            stack="".join(traceback.format_stack(frame)[-stack_lines:]) if frame else "")
            if abs(rss - last) > step_mb * 2**20:
                timeline.append(f"{time.perf_counter() - t0:8.1f} s {rss / 2**20:8.0f} MiB  {_where(frame, 3)}")
                last = rss
            time.sleep(interval_s)

    def report() -> None:
        print("\n".join(timeline), file=sys.stderr)
        print(f"==== peak {peak['rss'] / 2**20:.0f} MiB at {peak['at']:.1f} s, in\n{peak['stack']}", file=sys.stderr,
              flush=True)

    threading.Thread(target=sample, daemon=True).start()
    atexit.register(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--step-mb", type=float, default=150.0, help="timeline: changes larger than this (MiB)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the interlayer command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the interlayer command after --, e.g. -- lens logit --model gemma-3-270m")
    start(args.step_mb)
    from interlayer.cli.dispatch import main as interlayer_main

    return int(interlayer_main(command) or 0)


if __name__ == "__main__":
    sys.exit(main())
