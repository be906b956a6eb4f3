"""Torch work on a thread beside the engine's (adapter reads) must not leave the engine's OpenMP
threads sleeping at every barrier: libgomp stops spinning once it counts more of its threads than
cores, and every thread that ran a parallel op keeps a team of its own (``lora/side_thread.py``).

Each case runs in a fresh interpreter: OpenMP teams live as long as their threads, so torch work of
earlier tests in this process would decide the outcome."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")

SCENARIO = r"""
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from modelyard.server.engine.lora.side_thread import one_openmp_thread

guarded, threads = sys.argv[1] == "guarded", int(sys.argv[2])


def sleeps():
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def serial_gap(seconds=3e-4):
    # An engine step's Python between parallel ops. Without it, whether a throttled thread outlasts the
    # gap and sleeps depends on the CPU's spin speed (a few hundred ns of Python on one machine, most of
    # the gap on another); 300 us is far past libgomp's throttled spin and far short of its full one.
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def per_op(ops=400):
    a, b = torch.randn(1 << 17), torch.randn(1 << 17)
    before = sleeps()
    for _ in range(ops):
        a.add_(b, alpha=1e-9)  # parallel: 128k elements over the engine's threads
        serial_gap()
    return (sleeps() - before) / ops


def side_work():
    if guarded:
        with one_openmp_thread():
            torch.zeros(1 << 20).add_(1.0)
    else:
        torch.zeros(1 << 20).add_(1.0)


engine, side = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
engine.submit(torch.set_num_threads, threads).result()
before = engine.submit(per_op).result()
side.submit(side_work).result()
after = engine.submit(per_op).result()
print(json.dumps({"before": before, "after": after, "threads": engine.submit(torch.get_num_threads).result(),
                  "gnu": "libgomp" in Path("/proc/self/maps").read_text()}))
"""


def _run(guarded: bool, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, "guarded" if guarded else "unguarded", str(threads)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.parametrize("guarded", [True, False], ids=["one-openmp-thread", "unguarded"])
def test_side_thread_work_and_the_engine_threads(guarded: bool) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: no OpenMP team")
    threads = min(cores, 8)
    result = _run(guarded, threads)
    assert result["before"] < 0.5  # the engine's threads spin at barriers
    assert result["threads"] == threads
    if guarded:
        assert result["after"] < 0.5
    elif threads == cores and result["gnu"]:
        # The cause itself: a second team makes libgomp sleep at every barrier.
        assert result["after"] > 0.5
