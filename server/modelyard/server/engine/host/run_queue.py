"""How long this process's threads have waited for a CPU: the thread tuner's contention signal.

Linux counts, per thread, the time it was runnable but not running (the second field of
``/proc/self/task/<tid>/schedstat``, in ns; kernels built with ``CONFIG_SCHED_INFO``, as distribution
kernels are). Spinning OpenMP threads that own their cores hardly wait; when another process wants the
same cores, the kernel time-slices them and the wait grows with the share it takes. Unlike CPU time,
this tells a free core from a contended one whichever thread count is in use and whether the threads
spin or sleep at barriers.

Pure standard library: the engine reads it around each decode step.
"""

from __future__ import annotations

import os

_TASKS = "/proc/self/task"


def waited_s() -> float | None:
    """Seconds the process's live threads have spent waiting on a run queue, summed; None where the
    kernel does not say (no ``/proc``, or no scheduler statistics)."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    total = 0
    seen = False
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat", "rb") as stats:
                fields = stats.read().split()
        except OSError:
            continue  # the thread ended meanwhile
        if len(fields) >= 2:
            total += int(fields[1])
            seen = True
    return total / 1e9 if seen else None


def available() -> bool:
    return waited_s() is not None
