"""glibc malloc tuning for the CLI and benchmarks.

glibc serves allocations above its mmap threshold with fresh mmap()s and hands memory
back on free, so every large tensor pays its page faults again: the same forward pass
measured 4-30× slower depending on what ran before it. Raising the mmap and trim
thresholds keeps freed blocks in the heap. A process-wide setting, so the library never
applies it on import; the ``igd-fast`` commands and the benchmark suite do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 1 << 32) -> bool:
    """Raise glibc's mmap/trim thresholds; returns False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(mmap_threshold, 2**31 - 1)))
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(trim_threshold, 2**31 - 1)))
        return bool(ok)
    except (OSError, AttributeError):
        return False
