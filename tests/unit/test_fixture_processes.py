"""Processes the fixtures start (through ``tests.fixtures.processes``) die with the test process, even one
killed with no chance to run its teardown, and not before it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures.processes import popen_dying_with_parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]

# A stand-in for pytest: it starts two fixture-style children, one from its main thread and one from a
# short-lived thread (as a pool that starts two servers at once does), prints their PIDs, and waits to
# be killed.
FAKE_PYTEST = f"""
import sys, threading, time
from tests.fixtures.processes import popen_dying_with_parent

sleeper = {SLEEPER!r}
children = [popen_dying_with_parent(sleeper)]
thread = threading.Thread(target=lambda: children.append(popen_dying_with_parent(sleeper)))
thread.start()
thread.join()
print(" ".join(str(c.pid) for c in children), flush=True)
time.sleep(600)
"""

# Blocks SIGTERM before saying it is ready, so a SIGTERM sent to it stays pending, to be seen.
BLOCKS_SIGTERM = (
    "import signal, sys, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
    "print('ready', flush=True); time.sleep(600)"
)


def _gone(pid: int) -> bool:
    """No such process, or a zombie (exited; its adopter has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_gone(pids: list[int], timeout_s: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if not _gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _sigterm_pending(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [
        int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd", "ShdPnd"))
    ]
    return any(mask & (1 << (signal.SIGTERM - 1)) for mask in masks)


@pytest.mark.parametrize("kill_with", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_fixture_children_die_with_a_killed_test_process(kill_with: signal.Signals) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    fake = popen_dying_with_parent(
        [sys.executable, "-c", FAKE_PYTEST], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    children: list[int] = []
    try:
        assert fake.stdout is not None
        children = [int(pid) for pid in fake.stdout.readline().split()]
        assert len(children) == 2, f"the stand-in did not start its children (exit {fake.poll()})"
        assert not [p for p in children if _gone(p)], "a child died before its parent did"
        fake.send_signal(kill_with)
        fake.wait(30)
        assert _wait_gone(children) == []
    finally:
        fake.kill()
        fake.wait(30)
        for pid in children:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_child_asked_for_from_a_thread_is_not_signalled_when_that_thread_ends() -> None:
    started: list[subprocess.Popen[str]] = []
    thread_ids: list[int] = []

    def ask() -> None:
        thread_ids.append(threading.get_native_id())
        child = popen_dying_with_parent(
            [sys.executable, "-c", BLOCKS_SIGTERM], stdout=subprocess.PIPE, text=True
        )
        started.append(child)
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"

    thread = threading.Thread(target=ask)
    thread.start()
    thread.join()
    try:
        assert len(started) == 1
        # Once the thread's task is gone the kernel has sent any death signal it was going to send
        # (it does so as the thread exits), and the child, blocking SIGTERM, would still hold it pending.
        task = Path(f"/proc/self/task/{thread_ids[0]}")
        deadline = time.monotonic() + 30
        while task.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not task.exists()
        assert started[0].poll() is None
        assert not _sigterm_pending(started[0].pid)
    finally:
        for child in started:
            child.kill()
            child.wait(30)
