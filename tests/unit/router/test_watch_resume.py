"""Discovery watches resume after errors: relist, rebuild, count the error, keep going."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx

from modelyard.router.discovery.watch import ResourceCache, retry_delay
from modelyard.router.metrics import RouterMetrics


def obj(name: str, version: str = "1") -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "resourceVersion": version}}


class FlakySource:
    """First list+watch: one event, then the connection breaks. Second list: the new truth, then idle."""

    def __init__(self) -> None:
        self.lists = 0
        self.watched_from: list[str] = []
        self.idle = asyncio.Event()

    async def list(self) -> tuple[str, list[dict[str, Any]]]:
        self.lists += 1
        if self.lists == 1:
            return "10", [obj("a"), obj("b")]
        return "20", [obj("b", "2"), obj("c")]

    async def watch(self, resource_version: str) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        self.watched_from.append(resource_version)
        if self.lists == 1:
            yield "DELETED", obj("a")
            yield "BOOKMARK", obj("ignored")
            raise ConnectionError("watch stream broke")
        self.idle.set()
        await asyncio.Event().wait()  # a healthy watch with nothing to say
        yield "ADDED", obj("never")


async def test_a_broken_watch_relists_and_resumes() -> None:
    metrics = RouterMetrics()
    source = FlakySource()
    snapshots: list[list[str]] = []
    cache: ResourceCache

    def on_change() -> None:
        snapshots.append(sorted(name for _, name in cache.items))

    cache = ResourceCache("LLMModel", source, on_change, metrics, backoff_max_s=0.01)
    task = asyncio.create_task(cache.run())
    try:
        await asyncio.wait_for(source.idle.wait(), 5)
    finally:
        task.cancel()
    assert source.watched_from == ["10", "20"]  # each watch starts at its list's resourceVersion
    assert snapshots == [["a", "b"], ["b"], ["b", "c"]]
    assert cache.items[("ns", "b")]["metadata"]["resourceVersion"] == "2"
    assert metrics.discovery_errors.labels("LLMModel")._value.get() == 1
    assert metrics.discovery_events.labels("LLMModel")._value.get() == 1


def test_an_answering_api_server_is_retried_soon_whatever_the_back_off_grew_to() -> None:
    # A restarted kube-apiserver answers 503 "storage is (re)initializing" before it serves lists.
    request = httpx.Request("GET", "https://api/apis")
    unavailable = httpx.HTTPStatusError("503", request=request, response=httpx.Response(503, request=request))
    forbidden = httpx.HTTPStatusError("403", request=request, response=httpx.Response(403, request=request))
    refused = httpx.ConnectError("connection refused", request=request)
    assert retry_delay(unavailable, failures=9, backoff_max_s=10.0) == 0.5
    assert retry_delay(refused, failures=9, backoff_max_s=10.0) == 10.0
    assert retry_delay(forbidden, failures=9, backoff_max_s=10.0) == 10.0
    assert retry_delay(refused, failures=1, backoff_max_s=10.0) == 0.5
