"""Limits that hold across router replicas: three real router processes share one real redis-server."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.integration.router.redis_server import RedisServer
from tests.support.net import http_get

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.kill()


def keys(**limits: int) -> str:
    doc = {
        "keys": [
            {"name": "team-a", "key": "sk-team-a-secret", **limits},
            {"name": "free", "key": "sk-free-0001"},
        ]
    }
    return json.dumps(doc)


async def chat(
    s: aiohttp.ClientSession, router: Proc, key: str = "sk-team-a-secret", **extra: Any
) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {key}"}
    async with s.post(router.url + "/v1/chat/completions", json=CHAT | extra, headers=headers) as r:
        return r.status, {k.lower(): v for k, v in r.headers.items()}, await r.read()


async def usage(s: aiohttp.ClientSession, router: Proc, key: str = "sk-team-a-secret") -> dict[str, Any]:
    async with s.get(router.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc


def admin(backend: Proc, **knobs: Any) -> None:
    import urllib.request

    req = urllib.request.Request(
        backend.url + "/admin", data=json.dumps(knobs).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5).read()


def routers(stack: Stack, store: RedisServer, n: int, doc: str, **settings: Any) -> list[Proc]:
    backend = stack.procs[0]
    return [stack.router({"m": [backend.url]}, keys=doc, store_url=store.url, **settings) for _ in range(n)]


async def test_a_key_at_12_rpm_gets_12_answers_from_three_routers_not_36(
    stack: Stack, store: RedisServer
) -> None:
    stack.backend("a")
    three = routers(stack, store, 3, keys(requestsPerMinute=12))
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        results = await asyncio.gather(*(chat(s, three[i % 3]) for i in range(36)))
        elapsed = time.monotonic() - started
    codes = [status for status, _, _ in results]
    # The bucket refills one request every 5 s; the 36 requests usually take well under that (a loaded
    # machine may let the refill add one).
    assert 12 <= codes.count(200) <= 12 + int(elapsed / 5), (codes, elapsed)
    assert codes.count(429) == 36 - codes.count(200)
    refused = next(h for st, h, _ in results if st == 429)
    assert refused["x-modelyard-reject-reason"] == "rate-limit"
    assert int(refused["retry-after"]) >= 1
    answered = [h for st, h, _ in results if st == 200]
    assert {h["x-ratelimit-limit-requests"] for h in answered} == {"12"}
    assert sorted(int(h["x-ratelimit-remaining-requests"]) for h in answered)[:12] == list(range(12))
    assert all(h["x-ratelimit-reset-requests"].endswith("s") for h in answered)
    # Which router refuses is up to the scheduler (one may get all its requests in first); together
    # they count every refusal.
    rejected = 0.0
    series = 'modelyard_router_rejections_total{key="team-a",model="m",reason="rate-limit"} '
    for router in three:
        text = http_get(router.metrics_url)[1].decode()
        assert "modelyard_router_store_up 1.0" in text
        rejected += sum(float(line[len(series) :]) for line in text.splitlines() if line.startswith(series))
    assert rejected == codes.count(429)


async def test_a_concurrency_lease_holds_across_routers(stack: Stack, store: RedisServer) -> None:
    backend = stack.backend("a")
    a, b = routers(stack, store, 2, keys(maxConcurrent=2))
    admin(backend, delay_s=2.0)
    async with aiohttp.ClientSession() as s:
        slow = [asyncio.create_task(chat(s, a)) for _ in range(2)]
        await _until(lambda: _stat(backend, "in_flight") == 2)
        status, headers, body = await chat(s, b)
        assert status == 429, body
        assert headers["x-modelyard-reject-reason"] == "rate-limit"
        assert b"2 concurrent requests" in body
        assert [r[0] for r in await asyncio.gather(*slow)] == [200, 200]
        admin(backend, delay_s=0.0)
        assert (await chat(s, b))[0] == 200  # the leases were given back


async def test_token_reservations_are_settled_with_the_real_usage(stack: Stack, store: RedisServer) -> None:
    backend = stack.backend("a")
    a, b = routers(stack, store, 2, keys(tokensPerMinute=100_000, tokensPerDay=1_000_000))
    admin(backend, delay_s=1.5)
    async with aiohttp.ClientSession() as s:
        pending = asyncio.create_task(chat(s, a))
        await _until(lambda: _stat(backend, "in_flight") == 1)
        during = await usage(s, b)  # read through the other router: the reservation is shared
        assert during["shared"] is True
        assert during["tokens"]["today"] >= 50  # at least max_tokens is reserved
        assert during["requests"]["today"] == 1
        status, headers, _ = await pending
        assert status == 200
        assert headers["x-ratelimit-limit-tokens"] == "100000"
        # The fake backend reports usage 5 + 3: the estimate is replaced by the real figure.
        await _until_async(lambda: usage(s, b), lambda doc: doc["tokens"]["today"] == 8)
        after = await usage(s, a)
        assert after["tokens"]["this_month"] == 8
        assert after["tokens"]["remaining_today"] == 1_000_000 - 8


async def test_store_killed_mid_traffic_fails_open_and_limits_return_with_it(
    stack: Stack, store: RedisServer
) -> None:
    stack.backend("a")
    a, b = routers(stack, store, 2, keys(requestsPerMinute=4), store_retry_s=0.2)
    async with aiohttp.ClientSession() as s:
        assert (await chat(s, a, key="sk-free-0001"))[0] == 200
        store.kill()
        # Answers continue: the free key is never refused, and the limited key falls back to each
        # replica's own bucket of 4.
        assert [(await chat(s, a, key="sk-free-0001"))[0] for _ in range(5)] == [200] * 5
        per_replica = [(await chat(s, r))[0] for r in (a, b) for _ in range(5)]
        assert per_replica.count(200) == 8, per_replica
        for router in (a, b):
            assert "modelyard_router_store_up 0.0" in http_get(router.metrics_url)[1].decode()

        store.start()  # same port, empty: limits are shared again
        for router in (a, b):
            await _until(
                lambda r=router: "modelyard_router_store_up 1.0" in http_get(r.metrics_url)[1].decode()
            )
        shared = [(await chat(s, r))[0] for r in (a, b) for _ in range(4)]
        assert shared.count(200) == 4, shared
    for router in (a, b):
        log = (stack.tmp / f"router-{router.port}.log").read_text()
        assert log.count("limits store unreachable") == 1
        assert log.count("limits store reachable again") == 1


async def test_store_failure_mode_closed_answers_503(stack: Stack, store: RedisServer) -> None:
    stack.backend("a")
    (router,) = routers(stack, store, 1, keys(), store_failure_mode="closed")
    store.kill()
    async with aiohttp.ClientSession() as s:
        status, _, body = await chat(s, router)
    assert status == 503
    assert json.loads(body)["error"]["code"] == "store_unavailable"


async def test_leases_of_a_sigkilled_router_come_back_after_the_ttl(stack: Stack, store: RedisServer) -> None:
    backend = stack.backend("a")
    a, b = routers(stack, store, 2, keys(maxConcurrent=1), store_lease_ttl_s=2)
    admin(backend, delay_s=30.0)
    async with aiohttp.ClientSession() as s:
        held = asyncio.create_task(chat(s, a))
        await _until(lambda: _stat(backend, "in_flight") == 1)
        await asyncio.sleep(2.5)  # past one TTL: the live router renews its lease
        admin(backend, delay_s=0.0)
        assert (await chat(s, b))[0] == 429
        a.kill()  # SIGKILL: no chance to give the lease back
        with pytest.raises(aiohttp.ClientError):
            await held
        # Refused while the dead router's lease is still valid, answered once it has run out.
        await _until_async(lambda: chat(s, b), lambda r: r[0] == 200, timeout_s=10)


def _stat(backend: Proc, name: str) -> Any:
    return json.loads(http_get(backend.url + "/stats")[1])[name]


async def _until(predicate: Any, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await loop.run_in_executor(None, predicate):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _until_async(call: Any, ok: Any, timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not ok(await call()):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_a_spent_daily_budget_is_a_429_with_the_budget_reason_on_every_router(
    stack: Stack, store: RedisServer
) -> None:
    stack.backend("a")
    a, b = routers(stack, store, 2, keys(requestsPerDay=2, tokensPerDay=10_000))
    async with aiohttp.ClientSession() as s:
        assert [(await chat(s, r))[0] for r in (a, b)] == [200, 200]
        for router in (a, b):
            status, headers, body = await chat(s, router)
            assert status == 429
            assert headers["x-modelyard-reject-reason"] == "budget"
            assert json.loads(body)["error"]["code"] == "insufficient_quota"
            assert 1 <= int(headers["retry-after"]) <= 86_400
        doc = await usage(s, a)
        assert doc["requests"] == {"today": 2, "per_day": 2, "remaining_today": 0}
        assert doc["tokens"]["remaining_today"] == 10_000 - 16  # 5 + 3 tokens, twice
        assert (await usage(s, a, key="sk-free-0001"))["key"] == "free"  # each key sees only its own
    text = http_get(a.metrics_url)[1].decode()
    assert 'modelyard_router_rejections_total{key="team-a",model="m",reason="budget"} 1.0' in text
    # As last seen by this replica: after its own request, before or after the other router's.
    assert re.search(
        r'modelyard_router_budget_remaining\{budget="requests_per_day",key="team-a"\} [01]\.0', text
    )
