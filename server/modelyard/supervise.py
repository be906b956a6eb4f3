"""Child processes that live and die together with their parent, as a service manager expects.

- Any of SIGTERM, SIGINT or SIGHUP stops every child (SIGTERM, then SIGKILL after a grace period),
  and so does a child that exits on its own, with a message naming it and its exit status.
- A child dies with its parent even when the parent cannot clean up (SIGKILL, OOM kill): on Linux each
  child asks the kernel for SIGKILL when its parent goes (`PR_SET_PDEATHSIG`), before it runs anything.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stop(Exception):
    """Raised in the parent when it must stop: a stop signal, or a child that exited."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _die_with_parent(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # A stop that was asked for is a clean exit (0), as service managers expect after SIGTERM.
    raise Stop(f"{signal.Signals(signum).name} received: stopping", 0)


@dataclass
class Supervisor:
    """Start named children; `watch()` returns only by raising Stop; `stop()` ends them all."""

    grace_s: float = 20.0
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def install_signal_handlers(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _raise_stop)

    def start(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(list(cmd), env=dict(env), preexec_fn=_die_with_parent(os.getpid()))
        self.children[name] = proc
        return proc

    def check(self) -> None:
        """Raise Stop if a child has exited."""
        for name, proc in self.children.items():
            code = proc.poll()
            if code is not None:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
                raise Stop(f"the {name} (pid {proc.pid}) {how}; stopping the others", 1)

    def watch(self, interval_s: float = 0.5) -> None:
        while True:
            self.check()
            time.sleep(interval_s)

    def stop(self) -> None:
        """SIGTERM to every child still running, then SIGKILL to those still running after the grace."""
        # No more stop signals while stopping: a second Ctrl-C must not leave children half-stopped.
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        running = [p for p in self.children.values() if p.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + self.grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
