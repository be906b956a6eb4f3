"""Finished spans, batched and exported by a task of the caller's asyncio event loop: no thread.

The router's alternative to batch.py's exporter thread. That thread cost the router as much CPU as
recording the spans (about 10-20 us per request on two busy cores, docs/observability.md, "What tracing
costs"): it encodes spans another core last touched, and takes the GIL back and forth with the event loop.
Here everything runs on the loop. The router's requests (request_spans.py) are queued whole, a request's spans
together (span_queue.py: the queue is the recorder's sink), and encoded when their batch leaves, in one hot
loop: encoded inside each request, the same code ran cold, at several times the cost. Their records hold no
reference cycle once encoded, so reference counts free them and the collector never runs for them. A batch is
then one ``join`` handed to a non-blocking transport (loop_transport.py); it never holds more than
``max_batch`` spans.

The same ``OTEL_BSP_*`` behaviour as the thread: a batch leaves when it is full or the schedule delay has
passed, a failed send is retried with back-off within the export timeout and then dropped with a warning,
a full queue drops new spans. ``aclose`` sends what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from modelyard.otlp import request_spans, span_queue
from modelyard.otlp.encode import Encoder
from modelyard.otlp.transport import ExportError

log = logging.getLogger("modelyard.otlp")

_RETRY_FIRST_S, _RETRY_MAX_S = 0.1, 2.0


class LoopTransport(Protocol):
    """What the exporter sends through (loop_transport.py)."""

    async def send(self, body: bytes, timeout_s: float) -> None:
        """Deliver one request, or raise ExportError."""

    async def aclose(self) -> None: ...


class LoopExporter:
    def __init__(
        self,
        encoder: Encoder,
        transport: LoopTransport,
        schedule_delay_s: float = 5.0,
        max_queue: int = 2048,
        max_batch: int = 512,
        export_timeout_s: float = 10.0,
    ) -> None:
        self._encoder = encoder
        self._transport = transport
        self._delay = schedule_delay_s
        self._max_queue = max_queue
        self._max_batch = min(max_batch, max_queue)
        self._timeout = export_timeout_s
        self._encode_fields = request_spans.fields_encoder()
        self._queue = span_queue.queue_class()(self._max_queue, self._max_batch, self._notify)
        # ``add_spans(spans, count)``: ``count`` finished spans, encoded already (``ScopeSpans.spans``
        # fields) or a request's record that is encoded with the rest of its batch (request_spans.py). The
        # queue itself, called once per traced request: no frame of ours in between.
        self.add_spans = self._queue
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.failed = 0  # spans lost to failed sends
        self.sent = 0
        self._last_warning = 0.0

    @property
    def dropped(self) -> int:
        """Spans lost to a full queue."""
        return self._queue.dropped

    def _notify(self) -> None:
        """The queue needs the sender: to start it (the first spans), or to send a full batch now."""
        if self._wake is None:
            self._start()
        else:
            self._wake.set()

    def _start(self) -> None:
        """The sender task, on the loop of the first span (the tracer is built before the loop runs)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a span ended outside any loop: it waits for the next one ended on the loop
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="otlp-exporter")
        self._queue.started = True

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within ``timeout_s``) and stop."""
        if self._stopping:
            return
        self._stopping = self._queue.stopping = True
        if self._task is None and len(self._queue):
            self._start()
        if self._task is not None and self._wake is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            self._task.cancel()
        await self._transport.aclose()

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while not self._stopping:
            if self._queue.queued < self._max_batch:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), self._delay)
            wake.clear()
            await self._drain()
        await self._drain()

    async def _drain(self) -> None:
        # The requests are encoded here, a batch in one hot loop: encoded inside each request, the same code
        # ran cold (the router's own work between two requests evicts it) at several times the cost
        # (docs/observability.md, "What tracing costs").
        queue, encoder = self._queue, self._encoder
        while len(queue):
            items, size = queue.take(self._max_batch)
            try:
                body = encoder.request_of(self._encode_fields(items, encoder))
            except Exception:  # a bad attribute must not stop the exporter
                log.exception("otlp: could not encode %d spans", size)
                self.failed += size
                continue
            await self._export(body, size)

    async def _export(self, body: bytes, count: int) -> None:
        deadline = time.monotonic() + self._timeout
        pause = _RETRY_FIRST_S
        while True:
            try:
                await self._transport.send(body, max(deadline - time.monotonic(), 0.1))
                self.sent += count
                return
            except ExportError as exc:
                left = deadline - time.monotonic()
                if not exc.retryable or self._stopping or left < pause:
                    self.failed += count
                    self._warn(f"otlp: {count} spans not exported ({exc})")
                    return
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX_S)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= 10.0:  # a collector that is down must not flood the log
            self._last_warning = now
            log.warning(message)
