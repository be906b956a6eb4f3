"""Holding requests for a model with no ready pod (none yet, scaled to zero, or every pod ejected), or
a LoRA adapter that no ready pod has loaded yet.

A held request waits for the routing table to change or an ejected pod's re-admission, bounded by
``hold_max_wait_s`` (then 503 ``model_unavailable``) and ``hold_max_per_model`` waiters. A held stream
commits to 200 after ``hold_heartbeat_s`` and then gets ``: keepalive`` comments (through its
:class:`ClientReply`). The per-model count of waiters is what the operator's autoscaler reads to scale a
model from zero (GET /autoscaler/load, on the metrics port); an adapter's count goes to its base
model's LLMModel.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from modelyard.router import errors
from modelyard.router.metrics import RouterMetrics
from modelyard.router.reply import ClientReply
from modelyard.router.settings import RouterSettings
from modelyard.router.table import ModelRoute, RoutingTable


class Holds:
    def __init__(self, settings: RouterSettings, table: RoutingTable, metrics: RouterMetrics) -> None:
        self.settings = settings
        self.table = table
        self.metrics = metrics
        self.held: dict[str, int] = {}  # per model: requests waiting now

    async def wait(
        self, route: ModelRoute, stream: bool, started: float, entering: bool, reply: ClientReply
    ) -> None:
        """One wait for a change; raises the 503 when the hold is over or full."""
        s = self.settings
        now = time.monotonic()
        remaining = started + s.hold_max_wait_s - now
        reason = "every pod is failing"
        if not route.endpoints:
            reason = "no ready pod has the adapter loaded" if route.parent else "no ready pod"
        if remaining <= 0:
            raise errors.no_capacity(route.name, s.retry_after_s, f"{reason} after {s.hold_max_wait_s:g}s")
        held = self.held.get(route.name, 0)
        if entering and held >= s.hold_max_per_model:  # a request already waiting keeps its place
            raise errors.no_capacity(
                route.name, s.retry_after_s, f"{reason} and {held} requests already wait"
            )
        timeout = remaining
        if stream:
            until_beat = max(0.0, started + s.hold_heartbeat_s - now)
            timeout = min(timeout, s.hold_heartbeat_s if reply.committed else until_beat)
        readmit_at = self._next_readmission(route)
        if readmit_at is not None:
            timeout = min(timeout, max(0.0, readmit_at - now))
        self.held[route.name] = held + 1
        gauge = self.metrics.held.labels(route.name)
        gauge.inc()
        try:
            if timeout > 0:
                changed = self.table.changed()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout)
        finally:
            gauge.dec()
            self.held[route.name] -= 1
        if stream and time.monotonic() - started >= s.hold_heartbeat_s:
            await reply.heartbeat()

    def _next_readmission(self, route: ModelRoute) -> float | None:
        states = self.table.states
        times = [st.ejected_until for u in route.endpoints if (st := states.get(u)) and st.ejected_until]
        return min(times) if times else None
