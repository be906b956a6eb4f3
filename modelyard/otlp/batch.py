"""Finished spans, batched and exported on a background thread (the ``OTEL_BSP_*`` batch processor).

The request path only appends to a deque (``add``): no lock, no encoding. The thread wakes when a batch is
full or the schedule delay has passed, encodes and sends; a failed send is retried with back-off within the
export timeout, then dropped with a warning. A full queue drops new spans, as the SDKs do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from modelyard.otlp.span import Span
from modelyard.otlp.transport import ExportError, Transport

log = logging.getLogger("modelyard.otlp")

_RETRY_FIRST_S, _RETRY_MAX_S = 0.1, 2.0


class BatchExporter:
    def __init__(
        self,
        encode: Callable[[list[Span]], bytes],
        transport: Transport,
        schedule_delay_s: float = 5.0,
        max_queue: int = 2048,
        max_batch: int = 512,
        export_timeout_s: float = 10.0,
    ) -> None:
        self._encode = encode
        self._transport = transport
        self._delay = schedule_delay_s
        self._max_queue = max_queue
        self._max_batch = min(max_batch, max_queue)
        self._timeout = export_timeout_s
        self._queue: deque[Span] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self.dropped = 0  # spans lost to a full queue
        self.failed = 0  # spans lost to failed sends
        self.sent = 0
        self._last_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="otlp-exporter", daemon=True)
        self._thread.start()

    def add(self, span: Span) -> None:
        """A finished span (called from the request path: keep it to a few bytecodes)."""
        queue = self._queue
        size = len(queue)
        if size >= self._max_queue or self._stopping:
            self.dropped += 1
            return
        queue.append(span)
        if size + 1 == self._max_batch:
            self._wake.set()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``) and stop the thread."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        self._transport.close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue, popleft = self._queue, self._queue.popleft
        while queue:
            batch = [popleft() for _ in range(min(len(queue), self._max_batch))]
            self._export(batch)

    def _export(self, batch: list[Span]) -> None:
        try:
            body = self._encode(batch)
        except Exception:  # a bad attribute must not kill the thread
            log.exception("otlp: could not encode %d spans", len(batch))
            self.failed += len(batch)
            return
        deadline = time.monotonic() + self._timeout
        pause = _RETRY_FIRST_S
        while True:
            left = deadline - time.monotonic()
            try:
                self._transport.send(body, max(left, 0.1))
                self.sent += len(batch)
                return
            except ExportError as exc:
                left = deadline - time.monotonic()
                if not exc.retryable or self._stopping or left < pause:
                    self.failed += len(batch)
                    self._warn(f"otlp: {len(batch)} spans not exported ({exc})")
                    return
            time.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX_S)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # a collector that is down must not flood the log
            self._last_warning = now
            log.warning(message)
