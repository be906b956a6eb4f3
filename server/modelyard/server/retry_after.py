"""``Retry-After`` on 429 from how fast the queue actually drains, not a constant.

``DrainRate`` counts generation/embedding requests that completed (a 2xx answer fully sent) over a sliding
window; the wait it suggests is the time the current queue needs to drain at that rate, clamped to
[1, 60] s (the engine's own hint when nothing finished in the window). ``RetryAfterMiddleware`` feeds it
and rewrites the headers of every 429 the app sends, so the engine and serving code keep raising one
``QueueFullError`` and the HTTP layer says how long to wait.
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
        self._done: collections.deque[float] = collections.deque()

    def record(self) -> None:
        now = self._clock()
        self._done.append(now)
        self._trim(now)

    def per_second(self) -> float | None:
        """Completions per second over the whole window; None when none finished in it (rate unknown).

        Always the whole window, also just after start-up: a burst of early completions over a short span
        would promise a drain rate the engine does not sustain, and send every client back at once.
        """
        self._trim(self._clock())
        return len(self._done) / self.window_s if self._done else None

    def retry_after_s(self, queued: int) -> float | None:
        """Seconds for ``queued`` waiting requests (plus the one being refused) to drain; None: unknown."""
        rate = self.per_second()
        if rate is None:
            return None
        wait = (max(0, queued) + 1) / rate
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
        estimate = self.drain.retry_after_s(self.queued())
        # Nothing finished in the window yet: the engine's hint is all there is.
        wait = min(MAX_RETRY_S, max(MIN_RETRY_S, floor, estimate or 0.0))
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
