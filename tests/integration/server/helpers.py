"""Shared helpers for the server integration tests: raw HTTP, SSE parsing, metric scraping."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.models import ServerProcess


def sse_payloads(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """JSON payloads of a data-only SSE stream, asserting it ends with [DONE] and has no event: lines."""
    saw_done = False
    for line in lines:
        if not line:
            continue
        assert not line.startswith("event:"), f"unexpected SSE event line {line!r}"
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        data = line[len("data: ") :]
        if data == "[DONE]":
            saw_done = True
            break
        yield json.loads(data)
    assert saw_done, "stream ended without data: [DONE]"


def post_stream(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with (
        httpx.Client(timeout=60) as client,
        client.stream("POST", server.v1 + path, json=body, headers=auth(server)) as resp,
    ):
        assert resp.status_code == 200, resp.read()
        assert resp.headers["content-type"].startswith("text/event-stream")
        return list(sse_payloads(resp.iter_lines()))


def auth(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.api_key}"} if server.api_key else {}


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """Current value of one sample on /metrics (0 when absent)."""
    status, body = server.get("/metrics")
    assert status == 200
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
