"""Torch work on a thread beside the engine's (adapter reads) must not leave the engine's OpenMP
threads sleeping at every barrier: libgomp stops spinning once it counts more of its threads than
cores, and every thread that ran a parallel op keeps a team of its own (``lora/side_thread.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from modelyard.server.engine.lora.side_thread import one_openmp_thread

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")


def _sleeps() -> int:
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _sleeps_per_op(engine: ThreadPoolExecutor, ops: int = 400) -> float:
    a, b = torch.randn(1 << 17), torch.randn(1 << 17)

    def run() -> float:
        before = _sleeps()
        for _ in range(ops):
            a.add_(b, alpha=1e-9)  # parallel: 128k elements over the engine's threads
        return (_sleeps() - before) / ops

    return engine.submit(run).result()


def _side_work() -> None:
    torch.zeros(1 << 20).add_(1.0)  # parallel: 1M elements


@pytest.mark.parametrize("guarded", [True, False], ids=["one-openmp-thread", "unguarded"])
def test_side_thread_work_and_the_engine_threads(guarded: bool) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: no OpenMP team")
    threads = min(cores, 8)
    previous = torch.get_num_threads()
    engine = ThreadPoolExecutor(1)
    side = ThreadPoolExecutor(1)
    try:
        engine.submit(torch.set_num_threads, threads).result()
        assert _sleeps_per_op(engine) < 0.5  # spinning at barriers
        work: Callable[[], None] = _side_work
        if guarded:

            def work() -> None:
                with one_openmp_thread():
                    _side_work()

        side.submit(work).result()
        after = _sleeps_per_op(engine)
        assert engine.submit(torch.get_num_threads).result() == threads
        if guarded:
            assert after < 0.5
        elif threads == cores:
            # The cause itself: a second team makes libgomp sleep at every barrier (GNU OpenMP only).
            if "GNU" not in torch.__config__.parallel_info() and after < 0.5:
                pytest.skip("not GNU OpenMP's throttled spinning")
            assert after > 0.5
    finally:
        side.shutdown(wait=True)
        engine.shutdown(wait=True)
        torch.set_num_threads(previous)
