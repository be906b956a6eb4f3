"""The router's logs: one JSON object per line on stderr, written in batches.

Access lines (one per request) are already JSON; their fields are spliced into the line as text, not
parsed and encoded again. With tracing on, the line carries the request's ``trace_id`` before its
``request_id``. Lines are collected and written to stderr in one ``write``: every
``FLUSH_INTERVAL_S`` (the router's event loop calls :func:`flush_periodically`), as soon as 64 KiB are
waiting, at once for a WARNING or worse (together with the lines before it, so the order holds), and at
exit. A write per line cost about 40 µs of CPU per request on a loaded 2-core machine
(bench/README.md); a process killed with SIGKILL loses at most the last ``FLUSH_INTERVAL_S`` of lines.

Access lines skip ``logging`` itself once :func:`configure_logging` has installed the batched handler:
:func:`log_access` builds the same line as bytes and hands it to the handler. A ``LogRecord``, its
formatting and two JSON encodings cost about 17 µs a line, a sixth of the router's CPU for a JSON
request; the bytes path costs about 2 µs. Elsewhere (tests, other programs importing the router) the line
goes through ``logging`` like any other.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from contextvars import ContextVar
from typing import Protocol

import msgspec

ACCESS_LOGGER = "modelyard.router.access"
FLUSH_INTERVAL_S = 0.1
MAX_PENDING_BYTES = 64 * 1024


class Traced(Protocol):
    @property
    def trace_id(self) -> str: ...


# The request's span when tracing is on (router/tracing.py sets it in the request's task): its access line
# carries ``trace_id`` next to ``request_id``. The span, not its id: the hex is formatted only when logged.
access_trace: ContextVar[Traced | None] = ContextVar("modelyard_router_access_trace", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a worker's lines carry its index (``worker``)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        message = record.getMessage()
        if record.name == ACCESS_LOGGER and not record.exc_info and len(message) > 2 and message[0] == "{":
            head = json.dumps(entry, separators=(",", ":"))[:-1] + ","
            traced = access_trace.get()
            if traced is not None:
                head += f'"trace_id":"{traced.trace_id}",'
            return head + message[1:]
        entry["msg"] = message
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class BatchedLineHandler(logging.Handler):
    """Formatted lines kept in memory and written to ``fd`` together (see the module doc)."""

    def __init__(self, fd: int, max_pending: int = MAX_PENDING_BYTES) -> None:
        super().__init__()
        self.fd = fd
        self.max_pending = max_pending
        self._lines: list[bytes] = []
        self._size = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = (self.format(record) + "\n").encode("utf-8", "replace")
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)  # emit runs under the handler's lock (Handler.handle)
        self._size += len(line)
        if self._size >= self.max_pending or record.levelno >= logging.WARNING:
            self._write()

    def add(self, line: bytes) -> None:
        """A line formatted elsewhere (an INFO line, so it waits for the next batch)."""
        self.acquire()
        try:
            self._lines.append(line)
            self._size += len(line)
            if self._size >= self.max_pending:
                self._write()
        finally:
            self.release()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write()
        finally:
            self.release()

    def _write(self) -> None:
        if not self._lines:
            return
        data = memoryview(b"".join(self._lines))
        self._lines.clear()
        self._size = 0
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # stderr gone (closed pipe): nothing else to tell


class AccessLines:
    """Access lines as bytes, straight into the batched handler: what ``JsonFormatter`` makes of an access
    record, byte for byte in field order (``ts``, ``level``, ``logger``, ``worker``, ``trace_id``, then the
    request's fields)."""

    def __init__(self, sink: BatchedLineHandler, worker: int | None = None) -> None:
        self.sink = sink
        self._head = b'","level":"info","logger":"' + ACCESS_LOGGER.encode() + b'",'
        if worker is not None:
            self._head += b'"worker":' + str(worker).encode() + b","
        self._encode = msgspec.json.Encoder().encode
        self._second = -1
        self._stamp = b""

    def write(self, fields: dict[str, object]) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the date and time change once a second, the milliseconds each line
            self._second = second
            self._stamp = b'{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        line = self._stamp + b".%03dZ" % int((now - second) * 1000) + self._head
        traced = access_trace.get()
        if traced is not None:
            line += b'"trace_id":"' + traced.trace_id.encode() + b'",'
        self.sink.add(line + self._encode(fields)[1:] + b"\n")


_access_lines: AccessLines | None = None
_access_logger = logging.getLogger(ACCESS_LOGGER)


def log_access(fields: dict[str, object]) -> None:
    """One request's access line (the caller has checked that the access logger is on for INFO)."""
    lines = _access_lines
    if lines is None:
        _access_logger.info(json.dumps(fields, separators=(",", ":")))
    else:
        lines.write(fields)


def configure_logging(level: str, worker: int | None = None) -> None:
    global _access_lines
    sys.stderr.flush()
    handler = BatchedLineHandler(sys.stderr.fileno())
    handler.setFormatter(JsonFormatter(worker))
    # logging.shutdown (at exit) flushes every handler: the last lines are written too.
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # we write our own access log
    _access_lines = AccessLines(handler, worker)


async def flush_periodically(interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Write the batched lines every ``interval_s`` (a task of the router's event loop)."""
    while True:
        await asyncio.sleep(interval_s)
        for handler in logging.getLogger().handlers:
            handler.flush()


__all__ = [
    "ACCESS_LOGGER",
    "AccessLines",
    "BatchedLineHandler",
    "JsonFormatter",
    "access_trace",
    "configure_logging",
    "flush_periodically",
    "log_access",
]
