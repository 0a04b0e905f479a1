"""Keep freed memory in the process on glibc, so CPU training stops paying page faults per step.

glibc hands every allocation above its mmap threshold (at most 32 MiB by its own rule) to the
kernel with mmap and gives it back on free, so the next step's activations arrive as fresh
zero-filled pages: on the 2-core machine, budget-net at batch 512 spent 40% of its CPU time in
the kernel (1M page faults per 4 steps) and trained at 277 img/s; keeping freed memory in the heap
gave 440 img/s (same results: this changes where memory comes from, not what is computed). The
price is that the process keeps its peak heap until it exits, which a training run needs anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from glibc's malloc.h
_LIMIT = 1 << 30  # 1 GiB: above any one tensor of these nets; mallopt takes an int
_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; False where there is no glibc.

    CIFARLAB_MALLOC=default leaves glibc as it is (to measure the difference, or to keep a small
    resident size).
    """
    global _done
    if _done:
        return True
    if os.environ.get("CIFARLAB_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS, Windows: nothing to tune this way
        return False
    _done = bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT)) & bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT))
    return _done
