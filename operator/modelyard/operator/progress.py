"""Model load progress as the model server reports it on GET /ready of a loading pod.

The server answers 503 with `{"status": "loading", "stage": ..., "progress": 0.0-1.0}` while it
downloads and loads weights. One background loop asks only the pods that are running but not ready,
every `progress_interval_seconds`, and buckets the fraction (`progress_step`) so that a long load costs a
handful of status writes, not one per poll. Pods the operator cannot reach (NetworkPolicy, KWOK) simply
report no progress.

Engines without a progress endpoint (vllm, sglang: see `builders/engines/`, named by the pod's
`modelyard.dev/engine` annotation) are asked their health path instead: an answer other than 200 means
the HTTP server is up but the engine is still starting (SGLang's warm-up), 200 means it is up and the
readiness probe will pass shortly. (vLLM opens its port only once the weights are loaded, so before that
it reports nothing, like an unreachable pod.)
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from modelyard.api import metadata as md
from modelyard.api.llmmodel import Phase
from modelyard.operator.builders.engines import ENGINE_ANNOTATION, engine_builder
from modelyard.operator.observed import Key, ObservedState
from modelyard.operator.poller import Poller
from modelyard.operator.settings import OperatorSettings
from modelyard.operator.status import view_pod

log = logging.getLogger(__name__)

MAX_CONCURRENT_PROBES = 64

# (pod IP, path) -> (HTTP status, JSON body or None), or None when the pod cannot be reached.
Fetch = Callable[[str, str], Awaitable[tuple[int, Mapping[str, Any] | None] | None]]


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


def parse_health(status: int) -> LoadProgress:
    """Fallback for engines without a progress endpoint: their health answer while not Ready."""
    if status == 200:
        return LoadProgress("engine healthy, awaiting readiness", 1.0)
    return LoadProgress(f"engine starting (health {status})", 0.0)


def _loading_pod_ip(pod: Mapping[str, Any]) -> str | None:
    ip = (pod.get("status") or {}).get("podIP")
    return str(ip) if ip and view_pod(pod).phase is Phase.LOADING else None


def _probe_path(pod: Mapping[str, Any]) -> tuple[str, bool]:
    """(path to ask, whether it is a progress endpoint) for this pod's engine."""
    engine = ((pod.get("metadata") or {}).get("annotations") or {}).get(ENGINE_ANNOTATION, "modelyard")
    try:
        builder = engine_builder(engine)
    except ValueError:  # a pod of a newer operator's engine: nothing known to ask
        return "/ready", True
    if builder.progress_path is not None:
        return builder.progress_path, True
    return builder.health_path, False


class ProgressProber(Poller):
    def __init__(
        self,
        state: ObservedState,
        on_change: Callable[[Key], None],
        settings: OperatorSettings,
        fetch: Fetch | None = None,
    ) -> None:
        super().__init__(settings.progress_interval_seconds, timeout_s=2, what="load progress probe")
        self._state = state
        self._on_change = on_change
        self._settings = settings
        self._fetch = fetch

    async def _http_fetch(self, ip: str, path: str) -> tuple[int, Mapping[str, Any] | None] | None:
        url = f"http://{ip}:{md.SERVER_PORT}{path}"
        try:
            async with self._client().get(url) as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except ValueError:  # health endpoints answer an empty or plain-text body
                    body = None
        except (aiohttp.ClientError, TimeoutError):
            return None
        return status, body if isinstance(body, dict) else None

    async def probe_once(self) -> None:
        fetch = self._fetch or self._http_fetch
        targets = [
            (key, name, ip, *_probe_path(pod))
            for key, pods in list(self._state.pods.items())
            for name, pod in pods.items()
            if (ip := _loading_pod_ip(pod)) is not None
        ]
        limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)

        async def bounded(ip: str, path: str) -> tuple[int, Mapping[str, Any] | None] | None:
            async with limit:
                return await fetch(ip, path)

        answers = await asyncio.gather(*(bounded(ip, path) for _, _, ip, path, _ in targets))
        seen: dict[Key, dict[str, LoadProgress]] = {}
        for (key, name, _, _, is_progress), answer in zip(targets, answers, strict=True):
            if answer is None:
                continue
            status, body = answer
            if is_progress:
                progress = parse_ready(body, self._settings.progress_step)
            else:
                progress = parse_health(status)
            if progress is not None:
                seen.setdefault(key, {})[name] = progress
        for key in set(self._state.progress) | set(seen):
            if self._state.progress.get(key) != seen.get(key):
                if key in seen:
                    self._state.progress[key] = seen[key]
                else:
                    self._state.progress.pop(key, None)
                self._on_change(key)

    async def _round(self) -> None:
        await self.probe_once()
