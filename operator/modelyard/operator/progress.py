"""Model load progress as the model server reports it on GET /ready of a loading pod.

The server answers 503 with `{"status": "loading", "stage": ..., "progress": 0.0-1.0}` while it
downloads and loads weights. One background loop asks only the pods that are running but not ready,
every `progress_interval_seconds`, and buckets the fraction (`progress_step`) so that a long load costs a
handful of status writes, not one per poll. Pods the operator cannot reach (NetworkPolicy, KWOK) simply
report no progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelyard.api import metadata as md
from modelyard.api.llmmodel import Phase
from modelyard.operator.observed import Key, ObservedState
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.status import view_pod

log = logging.getLogger(__name__)

MAX_CONCURRENT_PROBES = 64

Fetch = Callable[[str], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class LoadProgress:
    stage: str
    fraction: float

    def render(self) -> str:
        return f"{self.stage} {round(self.fraction * 100)}%"


def parse_ready(body: Mapping[str, Any] | None, step: float) -> LoadProgress | None:
    """The server's /ready body -> bucketed progress; None unless it says it is loading."""
    if not body or body.get("status") != "loading":
        return None
    try:
        fraction = min(max(float(body.get("progress", 0.0)), 0.0), 1.0)
    except (TypeError, ValueError):
        return None
    bucketed = math.floor(fraction / step + 1e-9) * step if step > 0 else fraction
    return LoadProgress(str(body.get("stage") or "loading"), round(bucketed, 3))


def _loading_pod_ip(pod: Mapping[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip and view_pod(pod).phase is Phase.LOADING else None


class ProgressProber:
    def __init__(
        self,
        state: ObservedState,
        on_change: Callable[[Key], None],
        settings: OperatorSettings,
        fetch: Fetch | None = None,
    ) -> None:
        self._state = state
        self._on_change = on_change
        self._settings = settings
        self._fetch = fetch
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def _http_fetch(self, ip: str) -> Mapping[str, Any] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        url = f"http://{ip}:{md.SERVER_PORT}/ready"
        try:
            async with self._session.get(url) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    async def probe_once(self) -> None:
        fetch = self._fetch or self._http_fetch
        targets = [
            (key, name, ip)
            for key, pods in list(self._state.pods.items())
            for name, pod in pods.items()
            if (ip := _loading_pod_ip(pod)) is not None
        ]
        limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

        async def bounded(ip: str) -> Mapping[str, Any] | None:
            async with limit:
                return await fetch(ip)

        bodies = await asyncio.gather(*(bounded(ip) for _, _, ip in targets))
        seen: dict[Key, dict[str, LoadProgress]] = {}
        for (key, name, _), body in zip(targets, bodies, strict=True):
            progress = parse_ready(body, self._settings.progress_step)
            if progress is not None:
                seen.setdefault(key, {})[name] = progress
        for key in set(self._state.progress) | set(seen):
            if self._state.progress.get(key) != seen.get(key):
                if key in seen:
                    self._state.progress[key] = seen[key]
                else:
                    self._state.progress.pop(key, None)
                self._on_change(key)

    async def _run(self) -> None:
        interval = self._settings.progress_interval_seconds
        while True:
            try:
                await self.probe_once()
            except Exception as exc:
                log.warning("load progress probe failed: %s", exc)
            await asyncio.sleep(interval)

    def start(self) -> None:
        if self._settings.progress_interval_seconds > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None
