"""Ended requests waiting for the loop exporter (loop_export.py): the router's sink, called once per request.

A queue is called as the recorder's sink, ``queue(item, count)``: an item is a request's record
(request_spans.py), encoded when its batch leaves, or spans encoded already (bytes); ``count`` is how many
spans it holds. It holds at most ``max_queue`` spans (more are dropped and counted) and calls ``notify``
when the exporter must act: while its task is not running yet (``started`` false), and when a call fills
a batch. ``take(limit)`` gives the exporter the items at the front that fit ``limit`` spans.

The router calls the sink for every traced request, so where the package was built with a C compiler
(hatch_build.py) the compiled queue (_span_queue.c) does this, the same way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from modelyard.otlp.encode import Encoder


class Pending(Protocol):
    """A request's spans still to encode (request_spans.py's RequestSpans)."""

    def fields(self, encoder: Encoder) -> bytes:
        """The spans as ``ScopeSpans.spans`` fields."""


Item = bytes | Pending


class SpanQueue:
    def __init__(self, max_queue: int, max_batch: int, notify: Callable[[], None]) -> None:
        self.max_queue = max_queue
        self.max_batch = min(max_batch, max_queue)
        self._notify = notify
        self._items: deque[Item] = deque()
        self._counts: deque[int] = deque()
        self.queued = 0  # spans queued
        self.dropped = 0  # spans lost to a full queue
        self.started = False  # the exporter's task runs: notify only for full batches
        self.stopping = False  # closing: new items are dropped

    def __call__(self, item: Item, count: int) -> None:
        queued = self.queued
        if queued >= self.max_queue or self.stopping:
            self.dropped += count
            return
        self._items.append(item)
        self._counts.append(count)
        self.queued = queued = queued + count
        if not self.started or queued >= self.max_batch > queued - count:
            self._notify()

    def __len__(self) -> int:
        return len(self._items)

    def take(self, limit: int) -> tuple[list[Item], int]:
        """(items, spans) from the front: as many items as fit ``limit`` spans (one at least)."""
        items, counts = self._items, self._counts
        taken: list[Item] = []
        size = 0
        while counts and (not taken or size + counts[0] <= limit):
            taken.append(items.popleft())
            size += counts.popleft()
        self.queued -= size
        return taken, size


def queue_class() -> type[SpanQueue]:
    """The compiled queue where it was built, else this module's."""
    try:
        from modelyard.otlp._span_queue import SpanQueue as Compiled
    except ImportError:  # no C compiler where the package was installed
        return SpanQueue
    return Compiled
