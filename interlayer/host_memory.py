"""Giving freed host memory back to the operating system between a store's batches.

On Linux with glibc, the tensors a forward pass frees (attention scores, MLP activations,
each of a different size when batches differ in length) stay in the allocator's heap, and
the resident set creeps up batch after batch: about 1 GiB over MEXA's 27 FLORES batches
on Gemma-2-2B in bfloat16, traced with ``benchmarks/peak_trace.py``. ``malloc_trim(0)``
hands the free pages back; it takes well under a millisecond to a few milliseconds, and is
called once per batch (a no-op off glibc, and when the model is not on the CPU).
"""

from __future__ import annotations

import ctypes
import ctypes.util
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


__all__ = ["trim_host_memory"]
