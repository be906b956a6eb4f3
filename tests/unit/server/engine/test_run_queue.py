"""The run-queue wait the thread tuner reads: real kernel counters, grown by a process sharing our CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from modelyard.server.engine.host import run_queue

pytestmark = pytest.mark.skipif(
    not run_queue.available(), reason="the kernel reports no scheduler statistics"
)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_waiting_grows_when_another_process_spins_on_our_cpu() -> None:
    cpu = min(os.sched_getaffinity(0))
    spinner = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    before_mask = os.sched_getaffinity(0)
    clock = run_queue.RunQueueClock()
    try:
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.2)  # the spinner is up and pinned
        before = clock.waited_s()
        _spin(0.5)
        after = clock.waited_s()
    finally:
        clock.close()
        os.sched_setaffinity(0, before_mask)
        spinner.kill()
        spinner.wait()
    assert before is not None
    assert after is not None
    # Two runnable tasks on one CPU: the kernel keeps ours off it for a good part of the time.
    assert after - before > 0.05
