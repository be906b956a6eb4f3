"""Passive outlier ejection: a pod that keeps failing is taken out of rotation for a back-off period.

Failures are connection errors and 502/503/504 answers. ``eject_after`` consecutive failures eject the
pod for ``base * 2**(ejections-1)`` seconds (capped). When the period ends, or the active prober gets an
answer from it, the pod is eligible again; one success resets its record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from modelyard.router.table import EndpointState, ModelRoute, RoutingTable


class Health:
    def __init__(
        self,
        table: RoutingTable,
        eject_after: int,
        base_s: float,
        max_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.eject_after = eject_after
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock

    def eligible(self, route: ModelRoute, exclude: Collection[str] = ()) -> list[str]:
        now = self.clock()
        states = self.table.states
        out = []
        for url in route.endpoints:
            if url in exclude:
                continue
            state = states.get(url)
            if state is None or state.ejected_until <= now:
                out.append(url)
        return out

    def is_ejected(self, url: str) -> bool:
        state = self.table.states.get(url)
        return state is not None and state.ejected_until > self.clock()

    def ejected(self) -> list[str]:
        now = self.clock()
        return [url for url, s in self.table.states.items() if s.ejected_until > now]

    def success(self, url: str) -> None:
        state = self.table.states.get(url)
        if state is not None and (state.consecutive_failures or state.ejections):
            state.consecutive_failures = 0
            state.ejections = 0
            state.ejected_until = 0.0

    def failure(self, url: str) -> bool:
        """Record a failure; True when it ejected the pod."""
        state: EndpointState = self.table.state(url)
        state.consecutive_failures += 1
        if state.consecutive_failures < self.eject_after or state.ejected_until > self.clock():
            return False
        state.ejections += 1
        period = min(self.max_s, self.base_s * 2 ** (state.ejections - 1))
        state.ejected_until = self.clock() + period
        return True

    def readmit(self, url: str) -> None:
        """The prober heard from an ejected pod: eligible at once (its record resets on the next success)."""
        state = self.table.states.get(url)
        if state is not None and state.ejected_until > 0:
            state.ejected_until = 0.0
            state.consecutive_failures = max(0, self.eject_after - 1)
            self.table.notify()
