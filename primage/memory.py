"""Reusing freed memory instead of asking the system for fresh pages.

A case allocates and frees images of tens to hundreds of MB over and over (a resampled
DCE frame, a slab of a fit, a copy for ITK). glibc's malloc hands every block above its
mmap threshold (128 kB to 32 MB, adapting) straight back to the system when freed, so the
next image of the same size is fresh memory again, and every fresh 4 kB page costs a page
fault: on the 2-core benchmark machine ~1.4 CPU-s per GB, a third of the register step of
a clinical-size case. Serving such blocks from malloc's heap and keeping freed heap memory
for the next request removes most of these faults; the price is that a process keeps up
to :data:`KEPT_BYTES` of freed memory (its peak use is not raised by it). Threads started
afterwards share that heap instead of a malloc arena each, whose 64 MB heaps cannot hold an
image and hand it back on every free (a 2-thread Tofts fit of 2 M voxels: 0.64-0.86 M
page faults and 4.5-6.7 s of system time, against 0.25 M and 1.4-1.9 s).
"""

from __future__ import annotations

import ctypes
import sys

#: Blocks below this come from malloc's heap (glibc's largest accepted value is higher).
HEAP_BLOCKS_BELOW = 1 << 30
#: Freed memory at the top of the heap kept for reuse before it goes back to the system.
KEPT_BYTES = 1 << 30

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_done = False


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to serve big blocks from its heap, to keep freed memory for
    reuse and to give threads started from now on that same heap (see the module
    docstring). Once per process; True when it was applied (False off Linux or with
    another C library, where nothing changes)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, HEAP_BLOCKS_BELOW),
            (_M_TRIM_THRESHOLD, KEPT_BYTES),
            (_M_ARENA_MAX, 1),
        )
    )
    return _done
