"""Balancing measured on real processes: least load vs round robin with one slow replica; prefix affinity."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from tests.integration.router.conftest import Stack

pytestmark = pytest.mark.timeout(120)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
REQUESTS = 64
CONCURRENCY = 8


async def run_batch(targets: list[str], body: dict[str, object]) -> tuple[Counter[str], float, list[float]]:
    """REQUESTS requests, CONCURRENCY at a time; ``targets`` are cycled per request (round robin when > 1)."""
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    queue = list(range(REQUESTS))

    async def worker(s: aiohttp.ClientSession) -> None:
        while queue:
            i = queue.pop()
            t0 = time.monotonic()
            async with s.post(targets[i % len(targets)] + "/v1/chat/completions", json=body) as r:
                assert r.status == 200
                counts[r.headers["x-backend"]] += 1
                await r.read()
            latencies.append(time.monotonic() - t0)

    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        await asyncio.gather(*(worker(s) for _ in range(CONCURRENCY)))
    return counts, time.monotonic() - t0, sorted(latencies)


async def test_least_load_beats_round_robin_when_one_replica_is_slow(stack: Stack) -> None:
    slow = stack.backend("slow", "--delay-s", "0.4")
    fast = stack.backend("fast", "--delay-s", "0.02")
    router = stack.router({"m": [slow.url, fast.url]})

    rr_counts, rr_wall, rr_lat = await run_batch([slow.url, fast.url], CHAT)  # round robin, client-side
    ll_counts, ll_wall, ll_lat = await run_batch([router.url], CHAT)  # the router's least-load

    assert rr_counts["slow"] == rr_counts["fast"] == REQUESTS // 2
    # Least load keeps most traffic off the slow pod ...
    assert ll_counts["fast"] > 3 * ll_counts["slow"]
    # ... so the batch finishes sooner and the median request is faster.
    assert ll_wall < rr_wall
    assert ll_lat[len(ll_lat) // 2] < rr_lat[len(rr_lat) // 2]


async def test_prefix_hash_keeps_a_conversation_on_one_replica(stack: Stack) -> None:
    backends = [stack.backend(name) for name in ("a", "b", "c")]
    router = stack.router({"m": {"urls": [b.url for b in backends], "strategy": "PrefixHash"}})
    async with aiohttp.ClientSession() as s:
        homes: dict[str, set[str]] = {}
        for turn in range(5):
            for user in range(12):
                messages = [{"role": "user", "content": f"conversation {user}: a long shared opening"}]
                messages += [
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": f"turn {turn}"},
                ]
                async with s.post(
                    router.url + "/v1/chat/completions", json={"model": "m", "messages": messages}
                ) as r:
                    assert r.status == 200
                    homes.setdefault(f"user-{user}", set()).add(r.headers["x-backend"])
    assert all(len(h) == 1 for h in homes.values())  # sequential turns: load is light, affinity holds
    assert len({next(iter(h)) for h in homes.values()}) > 1  # and conversations spread over replicas
