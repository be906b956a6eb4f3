"""Every key's limits and budgets in a Redis-protocol store (Redis or Valkey), shared by all replicas.

One admission is one round trip: a Lua script checks and charges atomically
  * the requests-per-minute bucket,
  * a concurrency lease (a member of a sorted set scored by its expiry, renewed while the request runs,
    so the leases of a router that dies run out after ``store_lease_ttl_s``),
  * a token reservation (the request's estimate) from the tokens-per-minute bucket and the day/month
    budgets, settled with the real usage when the answer ends (a second script; a JSON answer goes
    out after it, a stream's end does not wait for it).
Times inside the scripts come from the store's own clock (``TIME``), so replicas' clocks need not agree;
the budget periods (UTC day and month) are named by the router's wall clock, which tests can inject.

Any store error marks the store down (one Warning log, ``modelyard_router_store_up`` 0) and raises
:class:`StoreDown`; admission.py then falls back to per-replica limits or refuses. While down, the store is
pinged every ``store_retry_s`` and taken back at its first answer (another Warning log).

Keys: ``<prefix>{<key name>}:<what>``; the braces keep one API key's data in one Redis Cluster slot.

The calls go over our own pipelined RESP connection (resp.py). A key's script keys and fixed arguments
are packed once per key and UTC day; a request packs only its lease id and estimate. The settle is
queued at once and handed back as a future, so it runs even if the request's handler is cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from typing import Any

from modelyard.router import errors
from modelyard.router.keys import ApiKeySpec
from modelyard.router.metrics import RouterMetrics
from modelyard.router.quota import Periods, RateState, Usage
from modelyard.router.resp import ReplyError, RespClient, StoreError, pack_bulk
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
# ARGV: rpm, tpm, max_concurrent, lease ttl ms, tokens/day, tokens/month, requests/day, day ttl s,
#       month ttl s, then the request's own: lease id, estimate
# -> {0, 0, rpm left, rpm reset ms, tpm left, tpm reset ms, tokens today, tokens this month, requests
#     today} or {refusal code, retry ms}
ADMIT = (
    _PRELUDE
    + """
local rpm, tpm, maxc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ttl, est = tonumber(ARGV[4]), tonumber(ARGV[11])
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= maxc then return {1, 1000} end
end
local r = rpm > 0 and level(KEYS[1], rpm) or 0
if rpm > 0 and r < 1 then return {2, math.ceil((1 - r) * 60000 / rpm)} end
local k = tpm > 0 and level(KEYS[2], tpm) or 0
if tpm > 0 and k < 1 then return {3, math.ceil((1 - k) * 60000 / tpm)} end
local rd = tonumber(redis.call('GET', KEYS[6]) or '0')
if tonumber(ARGV[7]) > 0 and rd >= tonumber(ARGV[7]) then return {4, 0} end
if tonumber(ARGV[5]) > 0 and tonumber(redis.call('GET', KEYS[4]) or '0') >= tonumber(ARGV[5]) then
  return {5, 0}
end
if tonumber(ARGV[6]) > 0 and tonumber(redis.call('GET', KEYS[5]) or '0') >= tonumber(ARGV[6]) then
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
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[10])
  redis.call('PEXPIRE', KEYS[3], ttl * 2)
end
out[7] = redis.call('INCRBY', KEYS[4], est)
redis.call('EXPIRE', KEYS[4], ARGV[8])
out[8] = redis.call('INCRBY', KEYS[5], est)
redis.call('EXPIRE', KEYS[5], ARGV[9])
out[9] = redis.call('INCR', KEYS[6])
redis.call('EXPIRE', KEYS[6], ARGV[8])
return out
"""
)

ADMIT_ARGS = 18  # after the script: numkeys, 6 keys, 9 fixed arguments, lease id, estimate

# KEYS: tpm bucket, leases, tokens today, tokens this month (of the admission's period)
# ARGV: tpm, then the request's own: lease id ('' = none), delta = real usage - estimate
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
SETTLE_ARGS = 8  # numkeys, 4 keys, tpm, lease id, delta

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


def connect(settings: RouterSettings) -> RespClient:
    assert settings.store_url is not None
    password = settings.store_password.get_secret_value() if settings.store_password else None
    return RespClient(settings.store_url.get_secret_value(), password, settings.store_timeout_s)


class SharedStore:
    def __init__(
        self,
        client: RespClient,
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
        self._instance = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self.held: dict[str, set[str]] = defaultdict(set)  # key name -> lease ids to renew
        self._renewed = time.monotonic()
        # key name -> (its spec, the UTC day, ADMIT's and SETTLE's keys and fixed arguments, packed)
        self._packed: dict[str, tuple[ApiKeySpec, str, bytes, bytes]] = {}
        self.gauge = metrics.store_gauge()
        self.gauge.set(1)

    def _k(self, name: str, what: str) -> str:
        return f"{self.prefix}{{{name}}}:{what}"

    def _fixed(self, spec: ApiKeySpec, periods: Periods) -> tuple[ApiKeySpec, str, bytes, bytes]:
        """The packed keys and fixed arguments of ``spec``'s ADMIT and SETTLE in ``periods``' day."""
        entry = self._packed.get(spec.name)
        if entry is not None and entry[0] is spec and entry[1] == periods.day:
            return entry
        name = spec.name
        tpm, leases = self._k(name, "tpm"), self._k(name, "leases")
        day_tokens = self._k(name, f"tokens:d:{periods.day}")
        month_tokens = self._k(name, f"tokens:m:{periods.month}")
        admit = pack_bulk(
            (
                6,
                self._k(name, "rpm"),
                tpm,
                leases,
                day_tokens,
                month_tokens,
                self._k(name, f"requests:d:{periods.day}"),
                spec.requests_per_minute,
                spec.tokens_per_minute,
                spec.max_concurrent,
                self.ttl_ms,
                spec.tokens_per_day,
                spec.tokens_per_month,
                spec.requests_per_day,
                DAY_TTL_S,
                MONTH_TTL_S,
            )
        )
        settle = pack_bulk((4, tpm, leases, day_tokens, month_tokens, spec.tokens_per_minute))
        entry = (spec, periods.day, admit, settle)
        self._packed[name] = entry
        return entry

    # ---- admission -------------------------------------------------------------------------------

    async def admit(self, spec: ApiKeySpec, estimate: int) -> Lease:
        """Charge one request to ``spec``'s key, or raise its 429; :class:`StoreDown` if unreachable."""
        if not self.up:
            raise StoreDown()
        periods = Periods.at(self.wall())
        lease_id = f"{self._instance}:{next(self._ids)}" if spec.max_concurrent else ""
        fixed = self._fixed(spec, periods)[2]
        try:
            out = await self._script(ADMIT, fixed + pack_bulk((lease_id, estimate)), ADMIT_ARGS)
        except (StoreError, OSError) as exc:
            self._down(exc)
            raise StoreDown() from None
        code = out[0]
        if code:
            raise _REFUSALS[code](spec, out[1], periods)
        if lease_id:
            self.held[spec.name].add(lease_id)
        rate = RateState(
            spec.requests_per_minute,
            out[2],
            out[3] / 1000,
            spec.tokens_per_minute,
            out[4],
            out[5] / 1000,
        )
        usage = Usage(periods.day, periods.month, out[6], out[7], out[8])
        return Lease(spec.name, lease_id, periods, rate, usage)

    def settle(self, spec: ApiKeySpec, lease: Lease, delta: int) -> asyncio.Future[None]:
        """Free the lease and correct the reservation by ``delta`` (real usage minus estimate). The
        command is queued before this returns; the future fails with :class:`StoreDown`."""
        if lease.lease_id:
            self.held[lease.key].discard(lease.lease_id)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.up:
            done.set_exception(StoreDown())
            return done
        fixed = self._fixed(spec, lease.periods)[3]  # the admission's day, even after midnight
        tail = fixed + pack_bulk((lease.lease_id, delta))
        client = self.client
        reply = client.send_packed(client.evalsha_command(SETTLE, tail, SETTLE_ARGS))
        reply.add_done_callback(partial(self._settled, done, tail))
        return done

    def _settled(self, done: asyncio.Future[None], tail: bytes | None, reply: asyncio.Future[Any]) -> None:
        exc = reply.exception() if not reply.cancelled() else StoreError("cancelled")
        if tail is not None and _noscript(exc):  # once more with the script's text, which loads it
            again = self.client.send_packed(self.client.eval_command(SETTLE, tail, SETTLE_ARGS))
            again.add_done_callback(partial(self._settled, done, None))
            return
        if exc is not None:
            self._down(exc)
        if done.done():
            return
        if exc is not None:
            done.set_exception(StoreDown())
        else:
            done.set_result(None)

    async def usage(self, name: str) -> Usage:
        if not self.up:
            raise StoreDown()
        periods = Periods.at(self.wall())
        try:
            values = await self.client.call(
                "MGET",
                self._k(name, f"tokens:d:{periods.day}"),
                self._k(name, f"tokens:m:{periods.month}"),
                self._k(name, f"requests:d:{periods.day}"),
            )
        except (StoreError, OSError) as exc:
            self._down(exc)
            raise StoreDown() from None
        td, tm, rd = (int(v) if v is not None else 0 for v in values)
        return Usage(periods.day, periods.month, td, tm, rd)

    # ---- scripts ---------------------------------------------------------------------------------

    async def _script(self, script: str, tail: bytes, nargs: int) -> Any:
        """Run ``script`` by its SHA1; if the store does not know it yet (a new or restarted store),
        once more with its text, which loads it. ``tail``: its ``nargs`` arguments, packed."""
        client = self.client
        try:
            return await client.send_packed(client.evalsha_command(script, tail, nargs))
        except ReplyError as exc:
            if not _noscript(exc):
                raise
        return await client.send_packed(client.eval_command(script, tail, nargs))

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
                await self.client.call("PING")
            except (StoreError, OSError):
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
            tail = pack_bulk((1, self._k(name, "leases"), self.ttl_ms, *ids))
            try:
                await self._script(RENEW, tail, 3 + len(ids))
            except (StoreError, OSError) as exc:
                self._down(exc)
                return

    async def run(self) -> None:
        """Background: at start, learn whether the store answers; then check every ``retry_s``."""
        try:
            await self.client.call("PING")
        except (StoreError, OSError) as exc:
            self._down(exc)
        while True:
            await asyncio.sleep(min(self.retry_s, self.lease_ttl_s / 3))
            await self.check()

    async def close(self) -> None:
        await self.client.aclose()


def _secs(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))


def _noscript(exc: BaseException | None) -> bool:
    return isinstance(exc, ReplyError) and str(exc).startswith("NOSCRIPT")
