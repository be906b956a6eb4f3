"""The router's HTTP/1.1 client for plain-HTTP pods: keep-alive connections, answers parsed as they come.

aiohttp's client was the largest share of the router's CPU per request (docs/router.md, Performance):
per request it builds a URL object, request and response objects, timers and trace signals, and reads
through a stream reader fed by a separate parser. Here the request line, headers and body go out in one
send on a pooled connection, and the answer is parsed from the bytes as they arrive (``Content-Length``,
chunked, or until the pod closes):

* :meth:`UpstreamClient.send` returns the whole answer (non-streamed requests; relayed in one write);
* :meth:`UpstreamClient.open` returns once the head is in, with the body read as it comes
  (:class:`StreamedAnswer`, the part of aiohttp's ``ClientResponse`` that relay.py uses).

TLS pods (``https://``) still go through aiohttp's client. Failures are aiohttp's exception classes, so
retries, replays and health treat both alike: :class:`ConnectFailed` (no connection: the request was not
sent), ``aiohttp.ConnectionTimeoutError`` (connecting took too long: not sent either),
``aiohttp.SocketTimeoutError`` (the pod was silent longer than the read timeout) and
``aiohttp.ServerDisconnectedError`` (the connection ended before the answer did, or the answer was not
HTTP/1.x).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

MAX_HEAD_BYTES = 64 * 1024  # status line + headers of one answer
_HEX = frozenset(b"0123456789abcdefABCDEF")
_CHUNKED, _UNTIL_CLOSE = -1, -2


class ConnectFailed(aiohttp.ClientConnectionError):
    """The TCP connection to the pod could not be made; the request was not sent."""


class _BadAnswer(aiohttp.ServerDisconnectedError):
    """The pod's bytes are not an HTTP/1.x answer (the connection is dropped)."""


class Reader(Protocol):
    async def readany(self) -> bytes: ...

    def at_eof(self) -> bool: ...


class UpstreamResponse(Protocol):
    """What the relay uses of an answer read as it comes: aiohttp's ``ClientResponse`` (TLS pods) or
    :class:`StreamedAnswer`."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def content_type(self) -> str: ...

    @property
    def content(self) -> Reader: ...

    @property
    def closed(self) -> bool: ...

    async def read(self) -> bytes: ...

    def release(self) -> object: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]  # as received, in order
    body: bytes


@dataclass(frozen=True, slots=True)
class _Origin:
    host: str
    port: int
    host_header: str


class Body:
    """A streamed answer's body as it arrives: what relay.py's pumps read, like aiohttp's reader.

    Data already received is handed out before an error that came after it (a pod that sent
    ``[DONE]`` and then cut the connection delivered its whole stream). Past ``HIGH_WATER`` unread bytes
    the connection stops reading (a slow client slows its pod, not the router's memory).
    """

    __slots__ = ("_chunks", "_conn", "_eof", "_exc", "_size", "_waiter")
    HIGH_WATER = 256 * 1024

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False
        self._exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.HIGH_WATER:
            self._conn.pause()
        self._wake()

    def feed_eof(self) -> None:
        self._eof = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readany(self) -> bytes:
        """What has arrived (waiting for something); b"" at the end."""
        while not self._chunks:
            if self._exc is not None:
                raise self._exc
            if self._eof:
                return b""
            self._waiter = self._conn.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        self._conn.resume()
        return data

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def ready(self) -> bool:
        """Whether ``readany`` would answer at once."""
        return bool(self._chunks) or self._eof or self._exc is not None


class StreamedAnswer:
    """An answer whose head is in and whose body is read as it comes (``content``); the relay's view
    of it is the part of aiohttp's ``ClientResponse`` it uses."""

    def __init__(self, conn: _Connection, status: int, headers: list[tuple[str, str]]) -> None:
        self._conn = conn
        self.status = status
        self.headers: CIMultiDict[str] = CIMultiDict(headers)
        self.content = Body(conn)
        self._done = False
        ctype = self.headers.get("Content-Type")
        self.content_type = (
            ctype.split(";", 1)[0].strip().lower() if ctype is not None else "application/octet-stream"
        )

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.content.readany():
            parts.append(chunk)
        return b"".join(parts)

    @property
    def closed(self) -> bool:
        return self._done

    def release(self) -> None:
        """The body was read to its end: the connection goes back to the pool (if it can be reused)."""
        if not self._done:
            self._done = True
            self._conn.pool._put_back(self._conn, reusable=self.content.at_eof())

    def close(self) -> None:
        """Drop the connection (the body was not read to its end: the pod sees the client leave)."""
        if not self._done:
            self._done = True
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, origin: str, pool: UpstreamClient) -> None:
        self.loop = loop
        self.origin = origin
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.buf = bytearray()
        self.active = False  # an exchange is under way: from the send until the answer's last byte
        self.waiter: asyncio.Future[Answer | StreamedAnswer] | None = None  # until the head (or all)
        self.streamed: StreamedAnswer | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout = 0.0
        self.last_data = 0.0
        self._reset(False)

    def _reset(self, stream: bool) -> None:
        self.stream = stream
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.length = 0  # body bytes still to come; or _CHUNKED, _UNTIL_CLOSE
        self.keep_alive = False
        self.parts: list[bytes] = []
        self.chunk = -1  # chunked: bytes left of the current chunk; -1 expects a size line, -2 trailers
        self.in_head = True
        self.streamed = None

    # ---- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        if not self.active:
            self.abort()  # bytes nobody asked for: the connection is out of step
            return
        self.last_data = self.loop.time()
        self.buf += data
        try:
            self._parse()
        except _BadAnswer as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.pool._lost(self)
        if not self.active:
            return
        if not self.in_head and self.length == _UNTIL_CLOSE:
            self._body_bytes(bytes(self.buf))
            self.buf.clear()
            self._complete()  # a body delimited by the end of the connection
            return
        self._fail(aiohttp.ServerDisconnectedError("the pod closed the connection before its answer ended"))

    def pause(self) -> None:
        if not self.paused and not self.closed and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and not self.closed and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.active = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    # ---- one exchange ----------------------------------------------------------------------------

    def start(self, data: bytes, body: bytes, read_timeout: float, stream: bool) -> asyncio.Future[Any]:
        assert self.transport is not None
        self._reset(stream)
        self.buf.clear()
        self.active = True
        waiter = self.waiter = self.loop.create_future()
        self.read_timeout = read_timeout
        self.last_data = self.loop.time()
        if self.timer is None:
            # One timer per connection, not per exchange: one left armed by an earlier exchange fires
            # early and re-arms itself from ``last_data`` (creating and cancelling a timer per request
            # cost about 3% of a JSON request's CPU).
            self.timer = self.loop.call_at(self.last_data + read_timeout, self._check_silence)
        if len(body) < 65536:
            self.transport.write(data + body)
        else:
            self.transport.writelines((data, body))
        return waiter

    def _check_silence(self) -> None:
        self.timer = None
        if not self.active:
            return
        now = self.loop.time()
        if self.paused:
            self.last_data = now  # the client is slow to read, not the pod to answer
        due = self.last_data + self.read_timeout
        if now < due:
            self.timer = self.loop.call_at(due, self._check_silence)
            return
        self._fail(aiohttp.SocketTimeoutError(f"the pod was silent for {self.read_timeout:g}s"))

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif self.streamed is not None:
            self.streamed.content.fail(exc)
        self.abort()

    def _body_bytes(self, data: bytes) -> None:
        if self.streamed is not None:
            if data:
                self.streamed.content.feed(data)
        else:
            self.parts.append(data)

    def _complete(self) -> None:
        """The answer's last byte is in (the silence timer stays armed for the next exchange)."""
        self.active = False
        if self.buf:
            self.keep_alive = False  # bytes past the answer: the connection is out of step
        if self.streamed is not None:
            self.streamed.content.feed_eof()
            return
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            parts = self.parts
            waiter.set_result(
                Answer(self.status, self.headers, parts[0] if len(parts) == 1 else b"".join(parts))
            )

    # ---- parsing -----------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        while self.in_head:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise _BadAnswer("the pod's response head is too large")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._head(head)
            if not self.in_head and self.stream:
                self.streamed = StreamedAnswer(self, self.status, self.headers)
                waiter = self.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(self.streamed)
        length = self.length
        if length >= 0:
            if self.stream or len(buf) >= length:
                n = min(length, len(buf))
                if n:
                    self._body_bytes(bytes(buf[:n]) if n < len(buf) else bytes(buf))
                    del buf[:n]
                self.length = length - n
                if self.length == 0:
                    self._complete()
        elif length == _CHUNKED:
            done = self._chunks()
            if self.streamed is not None and self.parts:
                parts = self.parts
                self._body_bytes(parts[0] if len(parts) == 1 else b"".join(parts))
                parts.clear()
            if done:
                self._complete()
        elif self.stream and buf:  # until the connection closes
            self._body_bytes(bytes(buf))
            buf.clear()

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        code = parts[1] if len(parts) > 1 else b""
        if not parts[0].startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise _BadAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        self.status = status
        keep_alive = parts[0] == b"HTTP/1.1"
        length: int | None = None
        chunked = False
        headers = self.headers
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise _BadAnswer(f"malformed header line: {line[:80]!r}")
            text = value.strip(b" \t").decode("utf-8", "surrogateescape")
            key = name.decode("latin-1")
            headers.append((key, text))
            lower = key.lower()
            if lower == "content-length":
                if not text.isdigit() or (length is not None and int(text) != length):
                    raise _BadAnswer(f"bad Content-Length: {text[:40]!r}")
                length = int(text)
            elif lower == "transfer-encoding":
                chunked = text.lower().rsplit(",", 1)[-1].strip() == "chunked"
                if not chunked:
                    raise _BadAnswer(f"unsupported Transfer-Encoding: {text[:40]!r}")
            elif lower == "connection":
                tokens = {t.strip() for t in text.lower().split(",")}
                if "close" in tokens:
                    keep_alive = False
        self.keep_alive = keep_alive
        self.in_head = False
        if chunked:
            self.length = _CHUNKED
        elif length is not None:
            self.length = length
        elif status in (204, 304):
            self.length = 0
        else:
            self.length = _UNTIL_CLOSE
            self.keep_alive = False

    def _chunks(self) -> bool:
        """Consume chunked framing from the buffer; True once the last chunk and trailers are in."""
        buf = self.buf
        while True:
            if self.chunk == -1:
                nl = buf.find(b"\r\n")
                if nl < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise _BadAnswer("a chunk size line is too long")
                    return False
                size = bytes(buf[:nl]).split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 16 or not _HEX.issuperset(size):
                    raise _BadAnswer(f"bad chunk size: {size[:20]!r}")
                del buf[: nl + 2]
                self.chunk = int(size, 16) or -2
            elif self.chunk == -2:
                if buf[:2] == b"\r\n":
                    del buf[:2]
                    return True
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise _BadAnswer("the trailers are too large")
                    return False
                del buf[: end + 4]
                return True
            else:
                need = self.chunk
                if len(buf) < need + 2:
                    return False
                if buf[need : need + 2] != b"\r\n":
                    raise _BadAnswer("a chunk does not end where its size says")
                self.parts.append(bytes(buf[:need]))
                del buf[: need + 2]
                self.chunk = -1


class UpstreamClient:
    """Keep-alive connections per pod origin (``http://host:port``), reused newest first."""

    def __init__(
        self, connect_timeout_s: float, read_timeout_s: float, keepalive_s: float, max_connections: int = 0
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        self.max_connections = max_connections  # 0: unlimited
        self._idle: dict[str, list[_Connection]] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._origins: dict[str, _Origin] = {}

    @staticmethod
    def handles(base: str) -> bool:
        """Whether this client can reach ``base`` (plain HTTP; TLS pods go through aiohttp)."""
        return base.startswith("http://")

    async def send(
        self, base: str, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> Answer:
        """One request to ``base + path`` and its whole answer. Cancelling it drops the connection, so
        the pod sees the client leave."""
        conn, waiter = await self._start(base, method, path, headers, body, stream=False)
        try:
            answer = await waiter
        except BaseException:
            conn.abort()
            raise
        assert isinstance(answer, Answer)
        self._put_back(conn, reusable=True)
        return answer

    async def open(
        self, base: str, method: str, path: str, headers: Iterable[tuple[str, str]], body: bytes
    ) -> StreamedAnswer:
        """One request, returned once the answer's head is in; the caller reads ``content`` and then
        calls ``release()`` (read to the end) or ``close()`` (anything else)."""
        conn, waiter = await self._start(base, method, path, headers, body, stream=True)
        try:
            answer = await waiter
        except BaseException:
            conn.abort()
            raise
        assert isinstance(answer, StreamedAnswer)
        return answer

    async def _start(
        self,
        base: str,
        method: str,
        path: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        stream: bool,
    ) -> tuple[_Connection, asyncio.Future[Any]]:
        origin = self._origin(base)
        # The header lines are joined in C (map/join): a Python loop over them cost about 4% of a request.
        length = (("Content-Length", str(len(body))),)
        lines = "\r\n".join(map(": ".join, chain(headers, length)))
        data = f"{method} {path} HTTP/1.1\r\nHost: {origin.host_header}\r\n{lines}\r\n\r\n".encode(
            "utf-8", "surrogateescape"
        )
        conn = self._take_idle(base) or await self._acquire(base, origin)
        if conn.closed:
            # Reset while this coroutine waited to run (a pod dying as it accepted): a write now would
            # vanish and the request wait out the read timeout. Nothing was sent, so another pod may take it.
            raise ConnectFailed(f"{base} closed the connection before the request was sent")
        return conn, conn.start(data, body, self.read_timeout_s, stream)

    def _put_back(self, conn: _Connection, reusable: bool) -> None:
        """An exchange ended: its connection waits for the next one, or is closed."""
        if reusable and conn.keep_alive and not conn.active and not conn.closed:
            conn.idle_since = conn.loop.time()
            self._idle.setdefault(conn.origin, []).append(conn)
            self._wake()
        else:
            conn.abort()

    def close(self) -> None:
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.abort()
        self._idle.clear()

    # ---- the pool ----------------------------------------------------------------------------------

    def _origin(self, base: str) -> _Origin:
        origin = self._origins.get(base)
        if origin is None:
            parts = urlsplit(base)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"not a plain-HTTP origin: {base}")
            origin = _Origin(parts.hostname, parts.port or 80, parts.netloc)
            self._origins[base] = origin
        return origin

    def _take_idle(self, base: str) -> _Connection | None:
        conns = self._idle.get(base)
        while conns:
            conn = conns.pop()
            if not conn.closed and conn.loop.time() - conn.idle_since < self.keepalive_s:
                return conn
            conn.abort()
        return None

    async def _acquire(self, base: str, origin: _Origin) -> _Connection:
        """An idle connection to ``base``, else a new one; at ``max_connections`` an idle connection to
        another pod is closed to make room, or the call waits for one to come back or close."""
        while True:
            conn = self._take_idle(base)
            if conn is not None:
                return conn
            if not self.max_connections or self._open < self.max_connections:
                return await self._connect(base, origin)
            victim = next((c for conns in self._idle.values() for c in conns), None)
            if victim is not None:
                self._idle[victim.origin].remove(victim)
                victim.abort()  # its connection_lost frees the slot
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._slot_waiters:
                    self._slot_waiters.remove(waiter)

    async def _connect(self, base: str, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        self._open += 1  # given back by the connection's connection_lost, or below if it never opens
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, base, self), origin.host, origin.port
                )
        except TimeoutError:
            self._release_slot()
            raise aiohttp.ConnectionTimeoutError(
                f"connecting to {base} took longer than {self.connect_timeout_s:g}s"
            ) from None
        except OSError as exc:
            self._release_slot()
            raise ConnectFailed(f"cannot connect to {base}: {exc}") from None
        except BaseException:
            self._release_slot()
            raise
        return conn

    def _lost(self, conn: _Connection) -> None:
        """A connection ended (closed by either side): forget it and free its slot."""
        conns = self._idle.get(conn.origin)
        if conns and conn in conns:
            conns.remove(conn)
        self._release_slot()

    def _release_slot(self) -> None:
        self._open -= 1
        self._wake()

    def _wake(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
