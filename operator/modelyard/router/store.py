"""Every key's limits and budgets in a Redis-protocol store (Redis or Valkey), shared by all replicas.

One admission is one round trip: a Lua script checks and charges atomically
  * the requests-per-minute bucket,
  * a concurrency lease (a member of a sorted set scored by its expiry, renewed while the request runs,
    so the leases of a router that dies run out after ``store_lease_ttl_s``),
  * a token reservation (the request's estimate) from the tokens-per-minute bucket and the day/month
    budgets, settled with the real usage when the answer ends (a second script, off the request path).
Times inside the scripts come from the store's own clock (``TIME``), so replicas' clocks need not agree;
the budget periods (UTC day and month) are named by the router's wall clock, which tests can inject.

Any store error marks the store down (one Warning log, ``modelyard_router_store_up`` 0) and raises
:class:`StoreDown`; admission.py then falls back to per-replica limits or refuses. While down, the store is
pinged every ``store_retry_s`` and taken back at its first answer (another Warning log).

Keys: ``<prefix>{<key name>}:<what>``; the braces keep one API key's data in one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from modelyard.router import errors
from modelyard.router.keys import ApiKeySpec
from modelyard.router.metrics import RouterMetrics
from modelyard.router.quota import Periods, RateState, Usage
from modelyard.router.settings import RouterSettings
from modelyard.router.store_types import Lease, StoreDown

log = logging.getLogger("modelyard.router.store")

DAY_TTL_S = 3 * 86_400  # a day's counters outlive the day (the usage endpoint reads them at its end)
MONTH_TTL_S = 35 * 86_400

# Shared by both scripts: the store's clock in ms, and a bucket's level refilled up to now.
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function level(key, cap)
  local h = redis.call('HMGET', key, 't', 'u')
  if not h[1] then return cap end
  return math.min(cap, tonumber(h[1]) + (now - tonumber(h[2])) * cap / 60000)
end
local function put(key, value, cap)
  redis.call('HSET', key, 't', tostring(value), 'u', now)
  -- a bucket left alone until it is full again is the same as no bucket
  redis.call('PEXPIRE', key, math.max(60000, math.ceil((cap - value) * 60000 / cap)) + 60000)
end
local function reset_ms(value, cap) return math.ceil((cap - value) * 60000 / cap) end
"""

# KEYS: rpm bucket, tpm bucket, leases, tokens today, tokens this month, requests today
# ARGV: rpm, tpm, max_concurrent, lease id, lease ttl ms, estimate,
#       tokens/day, tokens/month, requests/day, day ttl s, month ttl s
# -> {0, 0, rpm left, rpm reset ms, tpm left, tpm reset ms, tokens today, tokens this month, requests
#     today} or {refusal code, retry ms}
ADMIT = (
    _PRELUDE
    + """
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, est = tonumber(ARGV[5]), tonumber(ARGV[6])
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {1, 1000} end
end
local r = rpm > 0 and level(KEYS[1], rpm) or 0
if rpm > 0 and r < 1 then return {2, math.ceil((1 - r) * 60000 / rpm)} end
local k = tpm > 0 and level(KEYS[2], tpm) or 0
if tpm > 0 and k < 1 then return {3, math.ceil((1 - k) * 60000 / tpm)} end
local rd = tonumber(redis.call('GET', KEYS[6]) or '0')
if tonumber(ARGV[9]) > 0 and rd >= tonumber(ARGV[9]) then return {4, 0} end
if tonumber(ARGV[7]) > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[7]) then
  return {5, 0}
end
if tonumber(ARGV[8]) > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= tonumber(ARGV[8]) then
  return {6, 0}
end
local out = {0, 0, 0, 0, 0, 0, 0, 0, 0}
if rpm > 0 then
  r = r - 1
  put(KEYS[1], r, rpm)
  out[3], out[4] = math.floor(r), reset_ms(r, rpm)
end
if tpm > 0 then
  k = k - est
  put(KEYS[2], k, tpm)
  out[5], out[6] = math.floor(k), reset_ms(k, tpm)
end
if maxc > 0 then
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
out[7] = redis.call('INCRBY', KEYS[4], est)
redis.call('EXPIRE', KEYS[4], ARGV[10])
out[8] = redis.call('INCRBY', KEYS[5], est)
redis.call('EXPIRE', KEYS[5], ARGV[11])
out[9] = redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], ARGV[10])
return out
"""
)

# KEYS: tpm bucket, leases, tokens today, tokens this month (of the admission's period)
# ARGV: tpm, lease id ('' = none), delta = real usage - estimate
SETTLE = (
    _PRELUDE
    + """
if ARGV[2] ~= '' then redis.call('ZREM', KEYS[2], ARGV[2]) end
local delta = tonumber(ARGV[3])
if delta ~= 0 then
  local tpm = tonumber(ARGV[1])
  if tpm > 0 then put(KEYS[1], math.min(tpm, level(KEYS[1], tpm) - delta), tpm) end
  for i = 3, 4 do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBY', KEYS[i], delta) end
  end
end
return 1
"""
)

# KEYS: leases; ARGV: ttl ms, lease ids...
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return 1
"""

_REFUSALS: dict[int, Callable[[ApiKeySpec, int, Periods], errors.RouterError]] = {
    1: lambda s, ms, p: errors.rate_limited(f"{s.max_concurrent} concurrent requests", _secs(ms)),
    2: lambda s, ms, p: errors.rate_limited(f"{s.requests_per_minute} requests per minute", _secs(ms)),
    3: lambda s, ms, p: errors.rate_limited(f"{s.tokens_per_minute} tokens per minute", _secs(ms)),
    4: lambda s, ms, p: errors.budget_exhausted(
        f"{s.requests_per_day} requests per day", _secs(p.day_reset_s * 1000)
    ),
    5: lambda s, ms, p: errors.budget_exhausted(
        f"{s.tokens_per_day} tokens per day", _secs(p.day_reset_s * 1000)
    ),
    6: lambda s, ms, p: errors.budget_exhausted(
        f"{s.tokens_per_month} tokens per month", _secs(p.month_reset_s * 1000)
    ),
}


def connect(settings: RouterSettings) -> aioredis.Redis:
    assert settings.store_url is not None
    extra: dict[str, Any] = {}
    if settings.store_password is not None:
        extra["password"] = settings.store_password.get_secret_value()
    client: aioredis.Redis = aioredis.Redis.from_url(
        settings.store_url.get_secret_value(),
        socket_timeout=settings.store_timeout_s,
        socket_connect_timeout=settings.store_timeout_s,
        retry=Retry(NoBackoff(), 0),  # a failed call is answered by the fallback, not retried inline
        **extra,
    )
    return client


class SharedStore:
    def __init__(
        self,
        client: aioredis.Redis,
        settings: RouterSettings,
        metrics: RouterMetrics,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = settings.store_key_prefix
        self.ttl_ms = math.ceil(settings.store_lease_ttl_s * 1000)
        self.lease_ttl_s = settings.store_lease_ttl_s
        self.retry_s = settings.store_retry_s
        self.wall = wall
        self.up = True
        self._admit = client.register_script(ADMIT)
        self._settle = client.register_script(SETTLE)
        self._renew = client.register_script(RENEW)
        self._instance = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self.held: dict[str, set[str]] = defaultdict(set)  # key name -> lease ids to renew
        self._renewed = time.monotonic()
        self.gauge = metrics.store_gauge()
        self.gauge.set(1)

    def _k(self, name: str, what: str) -> str:
        return f"{self.prefix}{{{name}}}:{what}"

    # ---- admission -------------------------------------------------------------------------------

    async def admit(self, spec: ApiKeySpec, estimate: int) -> Lease:
        """Charge one request to ``spec``'s key, or raise its 429; :class:`StoreDown` if unreachable."""
        periods = Periods.at(self.wall())
        lease_id = f"{self._instance}:{next(self._ids)}" if spec.max_concurrent else ""
        name = spec.name
        keys = [
            self._k(name, "rpm"),
            self._k(name, "tpm"),
            self._k(name, "leases"),
            self._k(name, f"tokens:d:{periods.day}"),
            self._k(name, f"tokens:m:{periods.month}"),
            self._k(name, f"requests:d:{periods.day}"),
        ]
        args: list[str | int] = [
            spec.requests_per_minute,
            spec.tokens_per_minute,
            spec.max_concurrent,
            lease_id,
            self.ttl_ms,
            estimate,
            spec.tokens_per_day,
            spec.tokens_per_month,
            spec.requests_per_day,
            DAY_TTL_S,
            MONTH_TTL_S,
        ]
        out = await self._call(self._admit(keys=keys, args=args))
        code, retry_ms = int(out[0]), int(out[1])
        if code:
            raise _REFUSALS[code](spec, retry_ms, periods)
        if lease_id:
            self.held[name].add(lease_id)
        rate = RateState(
            limit_requests=spec.requests_per_minute,
            remaining_requests=int(out[2]),
            reset_requests_s=int(out[3]) / 1000,
            limit_tokens=spec.tokens_per_minute,
            remaining_tokens=int(out[4]),
            reset_tokens_s=int(out[5]) / 1000,
        )
        usage = Usage(periods.day, periods.month, int(out[6]), int(out[7]), int(out[8]))
        return Lease(name, lease_id, periods, rate, usage)

    async def settle(self, spec: ApiKeySpec, lease: Lease, delta: int) -> None:
        """Free the lease and correct the reservation by ``delta`` (real usage minus estimate)."""
        if lease.lease_id:
            self.held[lease.key].discard(lease.lease_id)
        keys = [
            self._k(lease.key, "tpm"),
            self._k(lease.key, "leases"),
            self._k(lease.key, f"tokens:d:{lease.periods.day}"),
            self._k(lease.key, f"tokens:m:{lease.periods.month}"),
        ]
        await self._call(self._settle(keys=keys, args=[spec.tokens_per_minute, lease.lease_id, delta]))

    async def usage(self, name: str) -> Usage:
        periods = Periods.at(self.wall())
        values = await self._call(
            self.client.mget(
                self._k(name, f"tokens:d:{periods.day}"),
                self._k(name, f"tokens:m:{periods.month}"),
                self._k(name, f"requests:d:{periods.day}"),
            )
        )
        td, tm, rd = (int(v) if v is not None else 0 for v in values)
        return Usage(periods.day, periods.month, td, tm, rd)

    async def _call(self, awaitable: Any) -> Any:
        if not self.up:
            with contextlib.suppress(Exception):
                awaitable.close()  # never awaited: an un-awaited coroutine would warn
            raise StoreDown()
        try:
            return await awaitable
        except (RedisError, OSError) as exc:
            self._down(exc)
            raise StoreDown() from None

    # ---- up/down and lease renewal ---------------------------------------------------------------

    def _down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            self.gauge.set(0)
            log.warning("limits store unreachable (%s): falling back until it answers again", exc)

    def _back(self) -> None:
        if not self.up:
            self.up = True
            self.gauge.set(1)
            log.warning("limits store reachable again: shared limits and budgets are back")

    async def check(self) -> None:
        """One health check: ping when down; when up, renew held leases once a third of their TTL."""
        if not self.up:
            try:
                await self.client.ping()
            except (RedisError, OSError):
                return
            self._back()
            return
        if time.monotonic() - self._renewed < self.lease_ttl_s / 3:
            return
        self._renewed = time.monotonic()
        for name, ids in list(self.held.items()):
            if not ids:
                self.held.pop(name, None)
                continue
            with contextlib.suppress(StoreDown):
                await self._call(self._renew(keys=[self._k(name, "leases")], args=[self.ttl_ms, *ids]))

    async def run(self) -> None:
        """Background: at start, learn whether the store answers; then check every ``retry_s``."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            self._down(exc)
        while True:
            await asyncio.sleep(min(self.retry_s, self.lease_ttl_s / 3))
            await self.check()

    async def close(self) -> None:
        await self.client.aclose()


def _secs(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))
