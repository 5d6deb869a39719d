"""glibc's allocator, set up for passes of large CPU batches.

A CPU forward at batch 512 allocates activations of tens of MB. With glibc's default
settings each of them is mapped afresh and its pages zeroed by the kernel on first touch,
then unmapped when freed (or trimmed from the heap top): the six no-grad forwards per batch
over the 60,000 Fashion-MNIST images took 37.7 s, 20.8 s of it system time in 9.6 million
page faults; with the settings below 24.7 s and 0.2 s (``benchmarks/results/allocator.md``).
Memory that a batch frees is kept for the next one instead.

All threads allocate from one arena: glibc otherwise gives each thread (the intra-op
workers, the decode-ahead thread) an arena of its own, each keeping up to the trim threshold
of freed memory, so a pass's peak memory depended on which thread happened to free what (the
60k Fashion-MNIST precompute peaked anywhere from 818 to 945 MB across runs, and the
million-row pass's ratio to it with it; with one arena, 904-965 MB in seven runs, and the
million-row pass 0.98x and 1.00x the 60k run's in two benchmark runs: ``benchmarks/results/app_scale.md``).

This is what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (or preloading jemalloc,
as PyTorch's CPU performance guide suggests) do from outside the process; written by hand
(twelve lines of ``ctypes``) because a library cannot set its host's environment.
``TRACIN_MALLOC_TUNING=0`` leaves the allocator alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
import threading

from .switches import env_flag

__all__ = ["keep_freed_batches"]

#: mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: allocations up to this size come from the heap (glibc's ceiling for the setting: 32 MB)
MMAP_THRESHOLD = 32 << 20
#: free memory at the heap's top is returned to the kernel only beyond this
TRIM_THRESHOLD = 512 << 20
#: arenas (glibc's default: 8 per core, created as threads first allocate)
ARENA_MAX = 1

_LOCK = threading.Lock()
_DONE: list[bool] = []


def keep_freed_batches() -> bool:
    """Set glibc's mmap threshold to 32 MB, its trim threshold to 512 MB and its arenas to
    one, once per process, so that a pass's per-batch activations reuse freed memory instead
    of new, zeroed pages, and its peak memory does not depend on thread timing (threads that
    already allocated keep their arena; those that start later share the one). Returns
    whether the settings are in force (False off Linux/glibc, or when
    ``TRACIN_MALLOC_TUNING`` is off). Read at call time."""
    with _LOCK:
        if _DONE:
            return _DONE[0]
        if not env_flag("TRACIN_MALLOC_TUNING"):
            return False
        ok = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                      and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                      and libc.mallopt(M_ARENA_MAX, ARENA_MAX) == 1)
            except (OSError, AttributeError):
                ok = False
        _DONE.append(ok)
        return ok
