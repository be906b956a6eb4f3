"""The engine process's C heap: how many glibc arenas it may grow, handing freed pages back to the OS,
and its resident memory for the start-up log.

glibc gives each thread that allocates its own arena (up to 8 per core), and memory freed inside an
arena stays mapped until ``malloc_trim``: the weights are read on a loader thread, the fast decode path
merges and repacks them on the engine thread, and the copies freed on the way stayed resident
(measured in ``docs/server.md``, *Memory of the engine processes*). Nothing here imports torch; on a C
library without these calls (musl) every function is a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger("modelyard.server.engine.host.heap")

M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
# Arenas the engine process may use: the event loop's thread, the loader and the engine thread
# allocate; more arenas only keep more freed memory apart.
ENGINE_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the running program's symbols, libc's among them
    except OSError:
        return None


def limit_arenas(count: int = ENGINE_ARENAS) -> bool:
    """Cap glibc's arenas (as ``MALLOC_ARENA_MAX`` would); call before other threads start."""
    mallopt = getattr(_libc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))


def trim() -> bool:
    """Return the free pages of every arena to the OS (``malloc_trim(0)``); True if any were."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return malloc_trim is not None and bool(malloc_trim(0))


def rss_bytes() -> int:
    """This process's resident set (0 where ``/proc`` is missing)."""
    try:
        fields = Path("/proc/self/statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
