"""Is the engine's step loop still moving? Seen from the HTTP process, for ``/ready`` and ``/health``.

A hung engine (a deadlocked step, a stopped process, a wedged device) answers nothing and dies of
nothing, so only the absence of progress shows it. Progress is a new engine step (``num_steps`` in the
engine's stats, pushed while it works) or a new output on an open stream; work is a request the engine
reports running or waiting, or an engine stream still open here. With work and no progress for half
of ``--engine-stall-timeout`` the server turns unready (the Service and the router stop sending), after
all of it not alive (``/health`` 503: the kubelet restarts the pod). Progress puts both back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from modelyard.server.engine.types import EngineStats

POLL_INTERVAL_S = 0.5


@dataclass(slots=True)
class OpenStreams:
    """Engine streams the serving layer is consuming, and the outputs they brought so far."""

    open: int = 0
    outputs: int = 0


class EngineWatch:
    def __init__(
        self,
        stats: Callable[[], EngineStats | None],
        streams: OpenStreams,
        stall_timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._streams = streams
        self.stall_timeout_s = stall_timeout_s
        self._clock = clock
        self._mark: tuple[int, int] = (-1, -1)
        self._since = clock()
        self.stalled_s = 0.0

    def poll(self) -> None:
        now = self._clock()
        stats = self._stats()
        mark = (stats.num_steps if stats is not None else 0, self._streams.outputs)
        queued = stats is not None and stats.num_running + stats.num_waiting > 0
        busy = queued or self._streams.open > 0
        if mark != self._mark or not busy:
            self._mark, self._since = mark, now
        self.stalled_s = now - self._since if busy else 0.0

    def _stalled_over(self, seconds: float) -> str | None:
        if self.stall_timeout_s <= 0 or self.stalled_s < seconds:
            return None
        return f"the engine made no progress for {self.stalled_s:.1f} s with requests queued"

    def unready(self) -> str | None:
        """Why the server should take no new requests (half the stall timeout), or None."""
        return self._stalled_over(self.stall_timeout_s / 2)

    def hung(self) -> str | None:
        """Why the server should be restarted (the whole stall timeout), or None."""
        return self._stalled_over(self.stall_timeout_s)

    async def run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(POLL_INTERVAL_S)
