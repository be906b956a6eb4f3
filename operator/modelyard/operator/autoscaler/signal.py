"""The load signal: requests in flight (and held) per LLMModel, summed over every router.

Each router answers ``GET /autoscaler/load`` on its metrics port (not its API port: an internal signal)
with its own counts (router/app.py). One task polls every router each ``autoscaler_poll_seconds`` and
keeps, per model, the samples of the last ``HISTORY_S`` seconds; after each round it wakes the
per-model loops, so a request held for a model at zero replicas reaches a decision within one poll
interval. A round in which any router did not answer records nothing: a partial sum would look like a
drop in load and scale down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence, Set
from typing import Any

import aiohttp

from modelyard.operator.autoscaler.decision import Sample
from modelyard.operator.poller import Poller

log = logging.getLogger(__name__)

Key = tuple[str, str]  # namespace, LLMModel name
HISTORY_S = 3600.0  # >= the longest windowSeconds and scaleDownDelaySeconds the CRD allows (1 h)
Fetch = Callable[[str], Awaitable[Mapping[str, Any] | None]]
Clock = Callable[[], float]


def parse_load(body: Mapping[str, Any]) -> dict[Key, tuple[int, int]]:
    """A router's answer -> {(namespace, name): (in flight, held)}; entries without a source are skipped."""
    out: dict[Key, tuple[int, int]] = {}
    for entry in body.get("models") or []:
        source = str(entry.get("source") or "")
        ns, sep, name = source.partition("/")
        if not sep or not name:
            continue
        try:
            in_flight, held = int(entry.get("inFlight", 0)), int(entry.get("held", 0))
        except (TypeError, ValueError):
            continue
        prev = out.get((ns, name), (0, 0))
        out[(ns, name)] = (prev[0] + in_flight, prev[1] + held)
    return out


def parse_started(body: Mapping[str, Any]) -> dict[Key, int]:
    """A router's answer -> {(namespace, name): requests started, ever} (routers before this field: none)."""
    out: dict[Key, int] = {}
    for entry in body.get("models") or []:
        ns, sep, name = str(entry.get("source") or "").partition("/")
        started = entry.get("started")
        if sep and name and isinstance(started, int):
            out[(ns, name)] = out.get((ns, name), 0) + started
    return out


class LoadSignal(Poller):
    """Sample history per model, fed by polling the routers."""

    def __init__(
        self,
        routers: Callable[[], Awaitable[Sequence[str]]],
        poll_s: float,
        fetch: Fetch | None = None,
        clock: Clock = time.monotonic,
        history_s: float = HISTORY_S,
    ) -> None:
        super().__init__(poll_s, timeout_s=max(0.5, poll_s * 2), what="autoscaler signal round")
        self._routers = routers
        self._fetch = fetch
        self._clock = clock
        self._history_s = history_s
        self._samples: dict[Key, deque[Sample]] = {}
        # Per (router URL, model): requests started, as of the last round.
        self._started: dict[tuple[str, Key], int] = {}
        self._updated = asyncio.Event()
        self.last_round_ok: float | None = None

    @property
    def poll_s(self) -> float:
        return self.interval_s

    # ---- reading -----------------------------------------------------------------------------------

    def samples(self, key: Key, horizon_s: float) -> list[Sample]:
        """Samples of the last ``horizon_s`` seconds, oldest first; empty when the signal is stale."""
        now = self._clock()
        if self.last_round_ok is None or now - self.last_round_ok > max(3 * self.poll_s, 2.0):
            return []
        history = self._samples.get(key)
        if history is None:
            return []
        return [s for s in history if s.at >= now - horizon_s]

    async def wait_for_round(self, limit_s: float) -> None:
        """Until the next complete round, or ``limit_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._updated.wait(), limit_s)

    # ---- polling -----------------------------------------------------------------------------------

    def record(
        self, loads: Mapping[Key, tuple[int, int]], known: Sequence[Key] = (), busy: Set[Key] = frozenset()
    ) -> None:
        """One complete round: every model the routers know gets a sample (0 when absent). A model in
        `busy` started a request since the last round: it counts at least one in flight, so a request
        that began and ended between two polls still holds off a scale-down for the whole delay."""
        now = self._clock()
        for key in set(loads) | set(known) | set(self._samples):
            in_flight, held = loads.get(key, (0, 0))
            if key in busy:
                in_flight = max(in_flight, 1)
            history = self._samples.setdefault(key, deque())
            history.append(Sample(now, in_flight, held))
            while history and history[0].at < now - self._history_s:
                history.popleft()
        self.last_round_ok = now
        event, self._updated = self._updated, asyncio.Event()
        event.set()

    def forget(self, key: Key) -> None:
        self._samples.pop(key, None)

    async def _http_fetch(self, url: str) -> Mapping[str, Any] | None:
        try:
            async with self._client().get(url.rstrip("/") + "/autoscaler/load") as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def poll_once(self) -> bool:
        urls = list(await self._routers())
        if not urls:
            return False
        fetch = self._fetch or self._http_fetch
        bodies = await asyncio.gather(*(fetch(u) for u in urls))
        if any(b is None for b in bodies):
            log.debug("a router did not answer; this round is skipped")
            return False
        total: dict[Key, tuple[int, int]] = {}
        busy: set[Key] = set()
        for url, body in zip(urls, bodies, strict=True):
            assert body is not None
            for key, (in_flight, held) in parse_load(body).items():
                prev = total.get(key, (0, 0))
                total[key] = (prev[0] + in_flight, prev[1] + held)
            for key, started in parse_started(body).items():
                # The first answer of a router is the baseline; one that restarted counts from 0 again.
                before = self._started.get((url, key))
                if before is not None and (started > before or 0 < started < before):
                    busy.add(key)
                self._started[(url, key)] = started
        self.record(total, busy=busy)
        return True

    async def _round(self) -> None:
        await self.poll_once()
