"""Helpers shared by the benchmarks: device names and peak-memory measurement."""

from __future__ import annotations

import ctypes
import json
import platform
import threading
import time
from pathlib import Path

import psutil
import torch


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


class Peak:
    """Peak memory above the start while the block runs (CUDA allocator, or process RSS)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return self
        if platform.system() == "Linux":
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2**20
            return
        self.running = False
        self.thread.join()
        self.mb = (max(self.peak, self.proc.memory_info().rss) - self.base) / 2**20


def write_result(path: str | Path, result: dict) -> None:
    """Write a benchmark's result JSON (creating benchmarks/results/) and say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
