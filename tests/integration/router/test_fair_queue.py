"""Fair queueing through a real router: one tenant's flood does not delay another's first tokens."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import aiohttp

from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.support.net import http_get

KEYS = """
keys:
  - {name: tenant-a, key: sk-tenant-a-0001}
  - {name: tenant-b, key: sk-tenant-b-0001}
"""
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}


async def stream(
    s: aiohttp.ClientSession, router: Proc, key: str, max_tokens: int = 2
) -> tuple[int, float, dict[str, str]]:
    """(status, seconds to the first body bytes, headers) of one streamed chat completion."""
    start = time.perf_counter()
    headers = {"Authorization": f"Bearer {key}"}
    body = BODY | {"max_tokens": max_tokens}
    async with s.post(router.url + "/v1/chat/completions", json=body, headers=headers) as r:
        await r.content.readany()
        ttft = time.perf_counter() - start
        await r.read()
        return r.status, ttft, {k.lower(): v for k, v in r.headers.items()}


async def tenant_b(s: aiohttp.ClientSession, router: Proc) -> float:
    results = await asyncio.gather(*(stream(s, router, "sk-tenant-b-0001") for _ in range(10)))
    assert [status for status, _, _ in results] == [200] * 10
    return statistics.median(ttft for _, ttft, _ in results)


async def test_a_flood_from_one_tenant_leaves_anothers_time_to_first_token_within_2x(stack: Stack) -> None:
    # A pod that batches 32 sequences, takes 1 s to the first token and 0.05 s per further chunk; the
    # flood's answers are 1-16 chunks long, so its slots free up at different times.
    backend = stack.backend(
        "a",
        "--max-concurrent",
        "32",
        "--delay-s",
        "1.0",
        "--chunk-delay-s",
        "0.05",
        "--chunks-from-max-tokens",
    )
    router = stack.router(
        {"m": {"urls": [backend.url], "maxNumSeqs": 32}},
        keys=KEYS,
        queue_pod_extra=0,
        queue_max_per_model=64,
        access_log="false",
    )
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as s:
        alone = await tenant_b(s, router)
        flood = [
            asyncio.create_task(stream(s, router, "sk-tenant-a-0001", max_tokens=1 + i % 16))
            for i in range(200)
        ]
        # Measure once the flood is steady: the queue has filled and the first of its answers ended.
        deadline = time.monotonic() + 30
        queued = 'modelyard_router_requests_queued{model="m"} 64.0'
        while queued not in http_get(router.metrics_url)[1].decode():
            assert time.monotonic() < deadline, "the flood never filled the queue"
            await asyncio.sleep(0.05)
        while json.loads(http_get(backend.url + "/stats")[1])["served"] < 10 + 8:
            assert time.monotonic() < deadline, "the flood's answers never ended"
            await asyncio.sleep(0.05)
        flooded = await tenant_b(s, router)
        a_results = await asyncio.gather(*flood)
    assert flooded <= 2 * alone, (alone, flooded)
    refused = [h for status, _, h in a_results if status == 429]
    # 32 run, 64 wait, the rest are shed at once.
    assert len(refused) >= 100
    assert {h["x-modelyard-reject-reason"] for h in refused} == {"queue-full"}
    assert all(int(h["retry-after"]) >= 1 for h in refused)
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_rejections_total{key="tenant-a",model="m",reason="queue-full"}' in metrics
    assert 'reason="queue-full"} ' in metrics
    assert 'modelyard_router_rejections_total{key="tenant-b"' not in metrics
