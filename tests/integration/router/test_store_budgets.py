"""Budgets in the shared store: two in-process replicas, a real redis-server, an injected wall clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelyard.router import errors
from modelyard.router.keys import parse_keys
from modelyard.router.metrics import RouterMetrics
from modelyard.router.settings import RouterSettings
from modelyard.router.store import SharedStore, connect
from tests.integration.router.redis_server import RedisServer


class Clock:
    def __init__(self, *parts: int) -> None:
        self.now = dt.datetime(*parts, tzinfo=dt.UTC).timestamp()  # type: ignore[misc]

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path, password="s3cret-pass").start()
    try:
        yield s
    finally:
        s.kill()


@pytest.fixture
async def replicas(server: RedisServer) -> AsyncIterator[tuple[list[SharedStore], Clock]]:
    # The password comes separately, as the chart passes it from a Secret.
    settings = RouterSettings(  # type: ignore[call-arg]
        _cli_parse_args=[],
        store_url=f"redis://127.0.0.1:{server.port}/0",
        store_password=server.password,
    )
    wall = Clock(2026, 12, 31, 23, 59, 30)
    stores = [SharedStore(connect(settings), settings, RouterMetrics(), wall=wall) for _ in range(2)]
    yield stores, wall
    for s in stores:
        await s.close()


async def test_requests_per_day_hold_across_replicas_and_roll_over_at_utc_midnight(
    replicas: tuple[list[SharedStore], Clock],
) -> None:
    (a, b), wall = replicas
    (spec,) = parse_keys("keys: [{name: t, key: sk-tttttttt, requestsPerDay: 3}]")
    for store in (a, b, a):
        lease = await store.admit(spec, 0)
        await store.settle(spec, lease, 0)
    with pytest.raises(errors.RouterError) as refused:
        await b.admit(spec, 0)
    assert refused.value.reason == "budget"
    assert refused.value.retry_after_s == 30  # to midnight UTC
    assert (await a.usage("t")).requests_day == 3
    wall.now += 31  # 1 January 2027: a new day and a new month
    await b.admit(spec, 0)
    usage = await a.usage("t")
    assert (usage.day, usage.requests_day) == ("20270101", 1)


async def test_token_budgets_reserve_then_settle_and_the_month_rolls_over(
    replicas: tuple[list[SharedStore], Clock],
) -> None:
    (a, b), wall = replicas
    (spec,) = parse_keys("keys: [{name: t, key: sk-tttttttt, tokensPerDay: 1000, tokensPerMonth: 1500}]")
    lease = await a.admit(spec, 900)
    assert (await b.usage("t")).tokens_day == 900  # the reservation is visible to every replica
    await a.settle(spec, lease, 120 - 900)
    assert (await b.usage("t")).tokens_day == 120
    lease = await b.admit(spec, 100)
    await b.settle(spec, lease, 1400 - 100)  # the real usage went far past the estimate
    with pytest.raises(errors.RouterError, match="tokens per day"):
        await a.admit(spec, 1)
    wall.now += 31
    usage = await b.usage("t")
    assert (usage.tokens_day, usage.tokens_month) == (0, 0)
    await a.admit(spec, 1)


async def test_the_tokens_per_minute_bucket_is_refunded_what_the_estimate_overshot(
    replicas: tuple[list[SharedStore], Clock],
) -> None:
    (a, b), _ = replicas
    (spec,) = parse_keys("keys: [{name: t, key: sk-tttttttt, tokensPerMinute: 1000}]")
    lease = await a.admit(spec, 1000)
    assert lease.rate.remaining_tokens <= 0
    with pytest.raises(errors.RouterError, match="tokens per minute"):
        await b.admit(spec, 1)
    await a.settle(spec, lease, 10 - 1000)  # used 10 of the 1000 reserved
    again = await b.admit(spec, 5)
    assert 980 <= again.rate.remaining_tokens <= 990
