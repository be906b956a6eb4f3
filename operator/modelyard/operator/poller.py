"""A background task that runs one polling round every interval, over one lazily opened HTTP session.

The load signal (autoscaler/signal.py), the load-progress prober (progress.py) and the adapter loop
(adapters/loop.py, also woken early by watch events: `wake`) poll pods this way. A round that raises is
logged (under the subclass's logger) and the loop goes on: one bad round must not stop the signal or the
progress reports for the operator's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

import aiohttp


class Poller(ABC):
    """Subclasses implement ``_round``; ``start`` runs it every ``interval_s`` (<= 0: never), ``close``
    stops the loop and closes the session that ``_client`` opened."""

    def __init__(self, interval_s: float, timeout_s: float, what: str) -> None:
        self.interval_s = interval_s
        self._timeout_s = timeout_s
        self._what = what
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @abstractmethod
    async def _round(self) -> None: ...

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        return self._session

    async def _run(self) -> None:
        log = logging.getLogger(type(self).__module__)
        while True:
            try:
                await self._round()
            except Exception as exc:
                log.warning("%s failed: %s", self._what, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Run the next round now rather than at the end of the interval (coalesced: several wakes
        during a round cause one more round)."""
        self._wake.set()

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
