"""Torch work on a thread other than the engine's, without slowing the engine's later steps.

torch's CPU ops run on OpenMP (libgomp), whose threads spin at each barrier while libgomp counts no
more of its threads than cores, and sleep at once (futex) when it counts more. Every thread that runs
a parallel op gets an OpenMP team of its own, kept alive as long as that thread lives (a
``ThreadPoolExecutor`` worker: the process's life). So one adapter read on ``asyncio.to_thread``
(``pack_inputs`` and the dtype copies run parallel ops) left the engine's own team sleeping and waking
at every op of every later decode step, base rows too (measured: ``bench/lora_thread_probe.py``,
docs/lora.md). Work on such a thread runs with one OpenMP thread, so it forms no team.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_openmp_thread() -> Iterator[None]:
    """Run the block's torch ops on this thread alone. ``torch.set_num_threads`` also sets the count
    threads started later begin with, so the previous count is put back after the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
