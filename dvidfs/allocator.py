"""Keep freed memory in the process instead of handing it back to the kernel.

Measured on the 2-core VM of docs/performance.md: touching fresh memory costs
~1.7 µs per 4 KiB page (a page fault plus zeroing).  A slice read allocates and
frees tens of MiB in short-lived pieces (32 KiB values copied out of LevelDB,
1 MiB slices, read-ahead layers).  With glibc's defaults, frees above the 128 KiB trim
threshold go back to the kernel and big arrays are mmapped, so every slice paid
its page faults again: a 1024² xy slice took 35 ms instead of 7 ms.

`tune_allocator()` raises the trim threshold and the mmap threshold, so freed
memory is reused.  The price is that the process keeps its peak heap (bounded
by the caches' budgets plus one read in flight) instead of shrinking after a
burst.  Called by the long-running entry points (the mount, the CLI, the
benchmark's in-process floor), never on import: it is process-wide.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

TRIM_THRESHOLD = 256 << 20   # keep up to this much free heap before returning any
MMAP_THRESHOLD = 32 << 20    # glibc's maximum: slices and value batches come from the heap;
                             # arrays of 32 MiB and more (read-ahead layers) are still mmapped
TOP_PAD = 16 << 20           # grow the heap in 16 MiB steps

_done = False


def tune_allocator() -> bool:
    """Apply the settings once per process; False where glibc's mallopt is
    missing (musl, macOS): everything works, just with more page faults."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    _done = ok
    return ok
