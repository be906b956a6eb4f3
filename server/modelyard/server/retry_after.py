"""``Retry-After`` on 429 from how fast the queue actually drains, not a constant.

``DrainRate`` counts generation/embedding requests that completed (a 2xx answer fully sent) over a sliding
window; the wait it suggests is the time the current queue needs to drain at that rate, clamped to
[1, 60] s. ``RetryAfterMiddleware`` feeds it and rewrites the headers of every 429 the app sends, so the
engine and serving code keep raising one ``QueueFullError`` and the HTTP layer says how long to wait.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIN_RETRY_S = 1.0
MAX_RETRY_S = 60.0
_WORK_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses")


class DrainRate:
    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._started = clock()
        self._done: collections.deque[float] = collections.deque()

    def record(self) -> None:
        now = self._clock()
        self._done.append(now)
        self._trim(now)

    def per_second(self) -> float:
        """Completions per second over the window (at least one per window: never divide by zero)."""
        now = self._clock()
        self._trim(now)
        span = max(1e-3, min(self.window_s, now - self._started))
        return max(1, len(self._done)) / span

    def retry_after_s(self, queued: int) -> float:
        """Seconds for ``queued`` waiting requests (plus the one being refused) to drain."""
        wait = (max(0, queued) + 1) / self.per_second()
        return min(MAX_RETRY_S, max(MIN_RETRY_S, wait))

    def _trim(self, now: float) -> None:
        while self._done and self._done[0] < now - self.window_s:
            self._done.popleft()


def _finished_ok(message: Message, status: int) -> bool:
    return 200 <= status < 300 and not message.get("more_body", False)


class RetryAfterMiddleware:
    def __init__(self, app: ASGIApp, drain: DrainRate, queued: Callable[[], int]) -> None:
        self.app = app
        self.drain = drain
        self.queued = queued

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") not in _WORK_PATHS:
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_with_retry_after(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 429:
                    message = {**message, "headers": self._retry_headers(message.get("headers", []))}
            elif message["type"] == "http.response.body" and _finished_ok(message, status):
                self.drain.record()  # a whole 2xx answer sent: one request left the engine
            await send(message)

        await self.app(scope, receive, send_with_retry_after)

    def _retry_headers(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        # What the engine suggested (retry-after-ms) is a floor; the drain estimate may only lengthen it.
        floor = max((_millis(v) for k, v in headers if k.lower() == b"retry-after-ms"), default=0.0)
        wait = min(MAX_RETRY_S, max(floor, self.drain.retry_after_s(self.queued())))
        kept = [(k, v) for k, v in headers if k.lower() not in (b"retry-after", b"retry-after-ms")]
        # Whole seconds for Retry-After (no fractions allowed), milliseconds for clients that prefer them.
        kept.append((b"retry-after", str(math.ceil(wait)).encode()))
        kept.append((b"retry-after-ms", str(round(wait * 1000)).encode()))
        return kept


def _millis(value: bytes) -> float:
    try:
        return float(value) / 1000
    except ValueError:
        return 0.0
