"""``--workers N``: N router processes on one port, under a supervisor.

The process ``modelyard-router`` starts as becomes the supervisor and binds no API socket itself. It
starts N copies of itself with :data:`WORKER_ENV` set. Each worker is a whole router (discovery, keys,
store client, fair queue) that binds ``port`` with SO_REUSEPORT, so the kernel spreads new connections
over the workers, and serves its metrics on a Unix socket in the supervisor's private directory; the
supervisor merges them on ``metrics_port`` (worker_metrics.py).

Stopping: SIGTERM or SIGINT to the supervisor goes to every worker (each drains as a single router
does); the supervisor waits for them for ``shutdown_delay_s + shutdown_drain_s`` plus a margin, then
SIGKILLs what is left. When the supervisor dies without passing anything on (SIGKILL, the OOM killer),
the kernel sends each worker SIGTERM (``PR_SET_PDEATHSIG``), and a worker that notices its parent
changed stops too: no worker outlives its supervisor. A worker that exits on its own is restarted
after a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from modelyard.router.settings import RouterSettings
from modelyard.router.worker_metrics import create_supervisor_metrics_app

log = logging.getLogger("modelyard.router.workers")

WORKER_ENV = "MODELYARD_ROUTER_WORKER"  # "<index>:<supervisor pid>:<metrics socket>"; workers only
RESTART_DELAY_S = 1.0
STOP_MARGIN_S = 5.0
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process is told by its supervisor."""

    index: int
    supervisor_pid: int
    metrics_socket: Path

    def to_env(self) -> str:
        return f"{self.index}:{self.supervisor_pid}:{self.metrics_socket}"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerRole | None:
        raw = env.get(WORKER_ENV)
        if not raw:
            return None
        index, pid, path = raw.split(":", 2)
        return cls(int(index), int(pid), Path(path))


def die_with_supervisor(role: WorkerRole) -> None:
    """Have the kernel send this worker SIGTERM when its supervisor dies (Linux); leave at once when the
    supervisor is already gone (it died before the request took effect)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != role.supervisor_pid:
        raise SystemExit(f"router worker {role.index}: its supervisor {role.supervisor_pid} is gone")


async def watch_supervisor(role: WorkerRole, stop: asyncio.Event, interval_s: float = 1.0) -> None:
    """Where the death signal is not available: stop once the parent is no longer the supervisor."""
    while not stop.is_set():
        if os.getppid() != role.supervisor_pid:
            log.warning("worker %d: supervisor %d is gone, stopping", role.index, role.supervisor_pid)
            stop.set()
            return
        await asyncio.sleep(interval_s)


class Supervisor:
    """Starts, restarts and stops the workers; serves their merged metrics."""

    def __init__(self, settings: RouterSettings, argv: Sequence[str]) -> None:
        self.settings = settings
        self.argv = list(argv)
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        run_dir = Path(tempfile.mkdtemp(prefix="modelyard-router-"))
        sockets = [run_dir / f"worker-{i}.sock" for i in range(self.settings.workers)]
        metrics = web.AppRunner(
            create_supervisor_metrics_app(sockets),
            access_log=None,
            keepalive_timeout=self.settings.read_header_timeout_s,
        )
        await metrics.setup()
        try:
            site = web.TCPSite(metrics, self.settings.host, self.settings.metrics_port, reuse_address=True)
            await site.start()
            log.info(
                "router supervisor (pid %d): %d workers on %s:%d, merged metrics on :%d",
                os.getpid(),
                self.settings.workers,
                self.settings.host,
                self.settings.port,
                self.settings.metrics_port,
            )
            keepers = [asyncio.create_task(self._keep(i, s)) for i, s in enumerate(sockets)]
            await self.stopping.wait()
            await self._stop(keepers)
        finally:
            await metrics.cleanup()
            shutil.rmtree(run_dir, ignore_errors=True)
        log.info("router supervisor stopped")

    async def _keep(self, index: int, socket_path: Path) -> None:
        """Run worker ``index`` until the supervisor stops, restarting it when it exits on its own."""
        role = WorkerRole(index, os.getpid(), socket_path)
        while not self.stopping.is_set():
            env = {**os.environ, WORKER_ENV: role.to_env()}
            # (a stale socket of a worker that died is replaced by the new worker's listener)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelyard.router", *self.argv, env=env
            )
            self.procs[index] = proc
            if self.stopping.is_set():  # the stop came while this one was starting
                _signal(proc, signal.SIGTERM)
            code = await proc.wait()
            if self.stopping.is_set():
                return
            log.warning("router worker %d (pid %d) exited with %s; restarting it", index, proc.pid, code)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RESTART_DELAY_S)

    async def _stop(self, keepers: list[asyncio.Task[None]]) -> None:
        log.info("stopping %d router workers", len(self.procs))
        for proc in self.procs.values():
            _signal(proc, signal.SIGTERM)
        grace = self.settings.shutdown_delay_s + self.settings.shutdown_drain_s + STOP_MARGIN_S
        _, pending = await asyncio.wait(keepers, timeout=grace)
        if pending:
            log.warning("router workers still running after %.0fs: killing them", grace)
            for proc in self.procs.values():
                _signal(proc, signal.SIGKILL)
            await asyncio.wait(pending)


def _signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


__all__ = ["WORKER_ENV", "Supervisor", "WorkerRole", "die_with_supervisor", "watch_supervisor"]
