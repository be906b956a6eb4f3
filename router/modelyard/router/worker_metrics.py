"""The metrics listener of a router running several workers: one ``/metrics`` and ``/autoscaler/load``
for all of them, merged from each worker's own listener (a Unix socket the supervisor gave it).

Merging, by metric type: counters, histograms and summaries add up (each worker counted its own
requests); gauges of per-worker quantities (``SUMMED_GAUGES``: requests in flight, held, queued) add up;
``LOWEST_GAUGES`` take the lowest (the store is up only where every worker reaches it; a budget's
remaining is the latest, lowest reading); every other gauge describes what all workers see alike (the
routing table, the keys) and takes the highest. A worker that does not answer (restarting) is left out
of that scrape, so its counters restart from zero as after any process restart.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from modelyard.router import errors

log = logging.getLogger("modelyard.router.workers")

SUMMED_GAUGES = frozenset(
    {
        "modelyard_router_requests_in_flight",
        "modelyard_router_requests_held",
        "modelyard_router_requests_queued",
    }
)
LOWEST_GAUGES = frozenset({"modelyard_router_store_up", "modelyard_router_budget_remaining"})
SCRAPE_TIMEOUT_S = 5.0


def _combine(family: str, typ: str) -> Callable[[float, float], float]:
    if typ != "gauge" or family in SUMMED_GAUGES:
        return lambda a, b: a + b
    return min if family in LOWEST_GAUGES else max


class _Merged:
    """Prometheus families in first-seen order, as a collector for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_exposition(texts: Sequence[str]) -> bytes:
    """Pure: several Prometheus text expositions -> one, samples merged by name and labels."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type)
                values[fam.name] = {}
            combine = _combine(fam.name, fam.type)
            samples = values[fam.name]
            for sample in fam.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                samples[key] = combine(samples[key], sample.value) if key in samples else sample.value
    for name, merged in families.items():
        for (sample_name, labels), value in values[name].items():
            merged.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)


def merge_load(loads: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Pure: the workers' ``/autoscaler/load`` model lists -> one, counts added per model."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for models in loads:
        for entry in models:
            key = (str(entry["name"]), str(entry.get("source", "")))
            if key not in out:
                out[key] = dict(entry)
                continue
            for field in ("inFlight", "started", "held"):
                out[key][field] = int(out[key].get(field, 0)) + int(entry.get(field, 0))
    return list(out.values())


async def _fetch(socket_path: Path, path: str) -> bytes | None:
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(socket_path))) as session,
            session.get(f"http://worker{path}", timeout=timeout) as resp,
        ):
            return await resp.read() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None


def create_supervisor_metrics_app(sockets: Sequence[Path]) -> web.Application:
    """``/metrics`` and ``/autoscaler/load`` for all workers, each read from its Unix socket."""
    app = web.Application()

    async def scrape(path: str) -> list[bytes]:
        got = await asyncio.gather(*(_fetch(s, path) for s in sockets))
        return [g for g in got if g is not None]

    async def metrics(_: web.Request) -> web.Response:
        texts = [b.decode() for b in await scrape("/metrics")]
        return web.Response(body=merge_exposition(texts), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def autoscaler_load(_: web.Request) -> web.Response:
        loads = [json.loads(b)["models"] for b in await scrape("/autoscaler/load")]
        return web.json_response({"models": merge_load(loads)})

    async def not_found(request: web.Request) -> web.Response:
        return errors.not_found(request.path).response()

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/autoscaler/load", autoscaler_load)
    app.router.add_route("*", "/{tail:.*}", not_found)
    return app


__all__ = ["create_supervisor_metrics_app", "merge_exposition", "merge_load"]
