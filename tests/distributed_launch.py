"""Launching interlayer commands on several local processes in tests (gloo on the CPU).

:func:`launch` starts ``n`` processes with the environment ``torchrun`` would give them
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and waits for all of them; no
launcher agent sits between, so a test sees what each rank itself does when another one
dies. Run as a script, this module is one such rank: it runs ``interlayer`` with the given
arguments (``INTERLAYER_TEST_EXTRA="rank:--flag value"`` appends options on one rank),
and with ``INTERLAYER_TEST_DIE="rank:step"`` that rank kills itself (SIGKILL,
no clean-up) when SAE training reaches that step, or when caching has written that many
shards (``INTERLAYER_TEST_DIE="rank:shard:n"``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent


class Ranks(NamedTuple):
    codes: list[int]
    out: list[str]
    err: list[str]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(argv: list[str], n: int = 2, die: str | None = None, timeout: float = 300,
           env: dict[str, str] | None = None, cwds: list[Path] | None = None) -> Ranks:
    """Run ``interlayer *argv`` on ``n`` processes; returns each rank's exit code and output.
    ``cwds`` gives each rank its own working directory (a relative ``--out`` then names a
    directory per rank, as on nodes with disks of their own)."""
    port = str(free_port())
    procs = []
    for rank in range(n):
        child = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
                 "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                 "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
        if die:
            child["INTERLAYER_TEST_DIE"] = die
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *map(str, argv)], env=child,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      cwd=cwds[rank] if cwds else ROOT))
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outs.append((proc.returncode, out, err))
    return Ranks([o[0] for o in outs], [o[1] for o in outs], [o[2] for o in outs])


def _arm(spec: str) -> None:
    parts = spec.split(":")
    if int(parts[0]) != int(os.environ["RANK"]):
        return
    if parts[1] == "shard":
        from interlayer.store import cache_files

        original_shard = cache_files.write_shard
        written = [0]

        def write_shard(*args, **kwargs):
            rows = original_shard(*args, **kwargs)
            written[0] += 1
            if written[0] == int(parts[2]):
                os.kill(os.getpid(), signal.SIGKILL)
            return rows

        cache_files.write_shard = write_shard
        return
    from interlayer.saes import training

    original_step = training._Member.train_step

    def train_step(self, *args, **kwargs):
        if self.state["step"] == int(parts[1]):
            os.kill(os.getpid(), signal.SIGKILL)
        return original_step(self, *args, **kwargs)

    training._Member.train_step = train_step


if __name__ == "__main__":
    if os.environ.get("INTERLAYER_TEST_DIE"):
        _arm(os.environ["INTERLAYER_TEST_DIE"])
    argv = sys.argv[1:]
    extra = os.environ.get("INTERLAYER_TEST_EXTRA", "")  # "rank:--flag value": one rank gets other options
    if extra and int(extra.split(":", 1)[0]) == int(os.environ["RANK"]):
        argv += extra.split(":", 1)[1].split()
    from interlayer.cli.dispatch import main

    sys.exit(main(argv))
