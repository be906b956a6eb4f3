"""How long this process's threads have waited for a CPU: the thread tuner's contention signal.

Linux counts, per thread, the time it was runnable but not running (the second field of
``/proc/self/task/<tid>/schedstat``, in ns; kernels built with ``CONFIG_SCHED_INFO``, as distribution
kernels are). Spinning OpenMP threads that own their cores hardly wait; when another process wants the
same cores, the kernel time-slices them and the wait grows with the share it takes. Unlike CPU time,
this tells a free core from a contended one whichever thread count is in use and whether the threads
spin or sleep at barriers.

Pure standard library. The engine reads it around each decode step, so the files stay open between
reads (opening a dozen files per read cost ~0.5 ms on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import os

_TASKS = "/proc/self/task"


class RunQueueClock:
    """Reads the summed run-queue wait of the process's live threads, keeping their files open."""

    def __init__(self) -> None:
        self._files: dict[str, int] = {}  # tid -> open schedstat file descriptor

    def waited_s(self) -> float | None:
        """Seconds the process's live threads have spent waiting on a run queue, summed; None where
        the kernel does not say (no ``/proc``, or no scheduler statistics)."""
        try:
            tids = os.listdir(_TASKS)
        except OSError:
            return None
        for gone in self._files.keys() - set(tids):
            with contextlib.suppress(OSError):
                os.close(self._files.pop(gone))
        total = 0
        seen = False
        for tid in tids:
            try:
                fd = self._files.get(tid)
                if fd is None:
                    fd = self._files[tid] = os.open(f"{_TASKS}/{tid}/schedstat", os.O_RDONLY)
                fields = os.pread(fd, 128, 0).split()
            except OSError:
                continue  # the thread ended meanwhile
            if len(fields) >= 2:
                total += int(fields[1])
                seen = True
        return total / 1e9 if seen else None

    def close(self) -> None:
        for fd in self._files.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files.clear()


def available() -> bool:
    clock = RunQueueClock()
    try:
        return clock.waited_s() is not None
    finally:
        clock.close()
