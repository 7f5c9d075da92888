"""Helpers shared by the benchmarks: device names, peak-memory measurement and synchronised timing."""

from __future__ import annotations

import ctypes
import json
import platform
import statistics
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


def stand_in_tokenizer(vocab_size: int, directory: str | Path):
    """A word-level tokenizer with ``vocab_size`` entries, saved and reloaded from
    ``directory`` (so libraries that reload tokenizers by path accept it). For runs with
    random weights, which feed token ids and need no real tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` (Frobenius), computed in float32 on the host."""
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """The median seconds of ``repeats`` calls of ``fn`` after one warm-up call, each synchronised."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
