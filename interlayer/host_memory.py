"""Giving freed host memory back to the operating system between a store's batches.

On Linux with glibc, the tensors a forward pass frees (attention scores, MLP activations,
each of a different size when batches differ in length) stay in the allocator's heap, and
the resident set creeps up batch after batch: about 1 GiB over MEXA's 27 FLORES batches
on Gemma-2-2B in bfloat16, traced with ``benchmarks/peak_trace.py``. ``malloc_trim(0)``
hands the free pages back; it takes well under a millisecond to a few milliseconds, and is
called once per batch (a no-op off glibc, and when the model is not on the CPU).

The same creep happens between the report's sections (each leaves its freed tensors
behind, and the next section's transient comes on top: the whole quick report on
Gemma-2-2B peaked 0.9 GiB above a fresh process's baseline) and across generation
calls (the key-value cache grows by a copy each step). :func:`release_host_memory`
collects garbage first and is called between report sections;
:func:`interlayer.generation.generate_ids` trims every few steps and after each call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from typing import Any

_LIBC: Any = None
_LOADED = False


def _libc() -> Any:
    global _LIBC, _LOADED
    if not _LOADED:
        _LOADED, _LIBC = True, None
        if sys.platform.startswith("linux") and os.environ.get("INTERLAYER_MALLOC_TRIM", "1") != "0":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _LIBC = libc if hasattr(libc, "malloc_trim") else None
            except OSError:
                _LIBC = None
    return _LIBC


def trim_host_memory(device: Any = "cpu") -> bool:
    """Return the host allocator's free pages to the OS when ``device`` is the CPU (glibc
    only; ``INTERLAYER_MALLOC_TRIM=0`` turns it off). Returns whether anything ran."""
    if str(device).split(":")[0] != "cpu":
        return False
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_host_memory(device: Any = "cpu") -> bool:
    """Collect garbage (reference cycles holding tensors), then :func:`trim_host_memory`:
    what a long pipeline calls between its stages."""
    gc.collect()
    return trim_host_memory(device)


__all__ = ["release_host_memory", "trim_host_memory"]
