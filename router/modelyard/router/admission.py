"""Admitting one request for a key: the shared store when there is one and it answers, else this
replica's own counters (keys.py); settling what it used when it ends.

With a store that is down, ``store_failure_mode`` decides: ``open`` falls back to per-replica limits,
``closed`` answers 503. A request admitted by one side is settled on the same side. A shared settle is
sent to the store at once and handed back as a future, which a JSON answer waits for (it goes out when
the handler returns, so the client's next request finds the lease free on every replica) and a stream
does not (its end is already sent); a settle that fails leaves the lease to run out by its TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelyard.router import errors
from modelyard.router.keys import KeyState, KeyStore
from modelyard.router.metrics import RouterMetrics
from modelyard.router.quota import RateState, Usage
from modelyard.router.settings import StoreFailureMode
from modelyard.router.store_types import Lease, StoreDown

if TYPE_CHECKING:
    from modelyard.router.store import SharedStore

log = logging.getLogger("modelyard.router.admission")

# request[RATE_HEADERS]: OpenAI's x-ratelimit-* headers for the answer (added when it is prepared).
RATE_HEADERS = "modelyard.rate_headers"


@dataclass(frozen=True, slots=True)
class Grant:
    key: KeyState
    estimate: int
    rate: RateState
    lease: Lease | None  # set when the store admitted it


class Admission:
    def __init__(
        self,
        keys: KeyStore,
        metrics: RouterMetrics,
        store: SharedStore | None = None,
        failure_mode: StoreFailureMode = StoreFailureMode.OPEN,
        retry_after_s: int = 5,
    ) -> None:
        self.keys = keys
        self.metrics = metrics
        self.store = store
        self.failure_mode = failure_mode
        self.retry_after_s = retry_after_s
        self._settling: set[asyncio.Future[None]] = set()

    async def admit(self, key: KeyState, model: str, requested: str | None, estimate: int) -> Grant:
        """403/404 for a model outside the key's list; 429 (with its reason) or 503; else a grant."""
        self.keys.check_model(key, model, requested)
        try:
            grant = await self._admit(key, estimate)
        except errors.RouterError as err:
            if err.reason is not None:
                self.metrics.rejections.labels(model, key.name, err.reason).inc()
            raise
        return grant

    async def _admit(self, key: KeyState, estimate: int) -> Grant:
        if self.store is not None:
            try:
                lease = await self.store.admit(key.spec, estimate)
                if _has_budget(key):
                    self._budget_gauges(key, lease.usage)
                return Grant(key, estimate, lease.rate, lease)
            except StoreDown:
                if self.failure_mode is StoreFailureMode.CLOSED:
                    raise errors.store_unavailable(self.retry_after_s) from None
        rate = self.keys.admit_local(key, estimate)
        return Grant(key, estimate, rate, None)

    def settle(self, grant: Grant, used: int) -> asyncio.Future[None] | None:
        """The request is over and used ``used`` tokens: free its slot, correct its reservation. With
        the store, the future of the settle already sent (its errors are its own: a failed settle runs
        out by TTL; cancelling a wait for it does not cancel it)."""
        if grant.lease is None:
            self.keys.release(grant.key, used, grant.estimate)
            self._budget_gauges(grant.key, self.keys.usage_local(grant.key))
            return None
        assert self.store is not None
        done = self.store.settle(grant.key.spec, grant.lease, used - grant.estimate)
        self._settling.add(done)
        done.add_done_callback(_forget(self._settling))
        return done

    async def usage(self, key: KeyState) -> tuple[Usage, bool]:
        """The key's usage this UTC day and month, and whether it is the shared count."""
        if self.store is not None:
            with contextlib.suppress(StoreDown):
                return await self.store.usage(key.name), True
        return self.keys.usage_local(key), False

    def _budget_gauges(self, key: KeyState, usage: Usage) -> None:
        spec = key.spec
        for budget, limit, used in (
            ("tokens_per_day", spec.tokens_per_day, usage.tokens_day),
            ("tokens_per_month", spec.tokens_per_month, usage.tokens_month),
            ("requests_per_day", spec.requests_per_day, usage.requests_day),
        ):
            if limit:
                self.metrics.budget_remaining.labels(key.name, budget).set(max(0, limit - used))

    async def drain(self) -> None:
        """Wait for settles still under way (shutdown)."""
        if self._settling:
            await asyncio.wait(list(self._settling), timeout=5)


def _has_budget(key: KeyState) -> bool:
    s = key.spec
    return bool(s.tokens_per_day or s.tokens_per_month or s.requests_per_day)


def _forget(settling: set[asyncio.Future[None]]) -> Callable[[asyncio.Future[None]], None]:
    def done(fut: asyncio.Future[None]) -> None:
        settling.discard(fut)
        if not fut.cancelled():
            fut.exception()  # StoreDown: already logged by the store; the lease runs out by its TTL

    return done
