"""The router's HTTP/1.1 front: the listening socket's protocol, serving the hot JSON requests itself.

aiohttp's server builds, for every request, a URL object, a payload stream, a ``Request``, a task
through its handler loop and a response writer; together with the event loop that was most of a JSON
request's CPU in the router. This front parses the request head with httptools and, for the one shape
most traffic has, calls the proxy with a small request object and answers in one ``transport.write``:

* HTTP/1.1 ``POST`` to one of ``app.HOT_PATHS``, with a ``Content-Length`` no larger than
  ``max_body_bytes`` and no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``, whose body (waited for,
  up to ``read_body_timeout_s``, then 408) does not ask for a stream: a stream needs aiohttp's response
  writer. The body is parsed here, once, by the proxy's own parser, which decides "stream" as before.

Any other request hands its connection to aiohttp for good: the bytes received since that request
began are given to a protocol from the app's own server (``runner.server``), which then owns the
socket, so every other path, error and limit (chunked bodies, 100-continue, HTTP/1.0, header sizes,
slow bodies, garbage) is answered by the same code as before. A connection that never sends anything
else stays here.

The front keeps: keep-alive (``Connection: close`` honoured), pipelined requests (answered in order),
the header deadline (``read_header_timeout_s``, from connect or from the previous answer), client
disconnects cancelling the request (and so the upstream), and graceful shutdown (``shutdown``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from aiohttp.http_writer import _serialize_headers
from multidict import CIMultiDict, CIMultiDictProxy

from modelyard.router import errors
from modelyard.router.admission import RATE_HEADERS
from modelyard.router.body import ROUTED_BODY, RoutedBody, parse_body
from modelyard.router.relay import NOT_FORWARDED

log = logging.getLogger("modelyard.router.front")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_HEAD_END = b"\r\n\r\n"
# A longer head is aiohttp's to judge: under it, no line or field can pass aiohttp's own limit (8190).
_MAX_HEAD = 8190
_MAX_HEADERS = 128  # aiohttp's limit on the number of header lines: past it, its 400
_JOIN_MAX = 64 * 1024
# (head end, body length, path, headers) of a request the front serves.
_Pending = tuple[int, int, str, CIMultiDictProxy[str]]
_DEFAULT_TYPE = "Content-Type: application/octet-stream\r\n"
_CLOSE = "Connection: close\r\n"
_REASONS = {status.value: status.phrase for status in HTTPStatus}
# A pod's answer headers the front writes itself instead (the request id too).
_NOT_FORWARDED = NOT_FORWARDED | {"x-request-id"}


class WholeAnswer:
    """A pod's whole answer to a request the front serves, as the proxy hands it over: the front writes
    its head itself, without an aiohttp ``Response``, its header multidict and their serialization
    (about 5% of a JSON request's CPU). The client gets the same headers as through aiohttp's path
    (relay.forwarded_headers): the pod's, less hop-by-hop ones, with the front's Date and Server and the
    request's id."""

    __slots__ = ("body", "headers", "request_id", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, request_id: str) -> None:
        self.status = status
        self.headers = headers  # as the pod sent them
        self.body = body
        self.request_id = request_id


class LeanRequest:
    """What the proxy reads of a request (method, paths, headers, the body), for one the front serves.

    The body is complete before the proxy runs, so ``content`` answers at once, as aiohttp's stream does
    for a body that came with the head.
    """

    __slots__ = ("_body", "_state", "headers", "method", "path", "raw_path")

    def __init__(self, method: str, path: str, headers: CIMultiDictProxy[str], body: bytes) -> None:
        self.method = method
        self.path = path
        self.raw_path = path
        self.headers = headers
        self._body = body
        self._state: dict[Any, Any] = {}

    @property
    def content_length(self) -> int:
        return len(self._body)

    @property
    def content(self) -> LeanRequest:
        return self

    def is_eof(self) -> bool:
        return True

    def read_nowait(self) -> bytes:
        return self._body

    async def read(self) -> bytes:
        return self._body

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)


class _Clock:
    """The Date header, formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def date(self, now: float) -> str:
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = rfc822_formatted_time()
        return self.text


class Front:
    """The connections the front serves, and how it stops."""

    def __init__(
        self,
        handler: Handler,
        aiohttp_protocol: Callable[[], asyncio.Protocol],
        hot_paths: frozenset[str],
        max_body_bytes: int,
        header_timeout_s: float,
        body_timeout_s: float,
    ) -> None:
        self.handler = handler
        self.aiohttp_protocol = aiohttp_protocol
        self.hot_paths = hot_paths
        self.max_body_bytes = max_body_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.connections: set[Connection] = set()
        self.closing = False
        self.clock = _Clock()

    def __call__(self) -> Connection:
        return Connection(self)

    def pre_shutdown(self) -> None:
        """No new requests: idle connections close now; busy ones (a request being served, or its body
        still coming) after their answer."""
        self.closing = True
        for conn in list(self.connections):
            if not conn.busy:
                conn.close()

    async def shutdown(self, drain_s: float) -> None:
        """Wait up to ``drain_s`` for the requests under way, then cancel what is left."""
        self.pre_shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while (busy := [c for c in self.connections if c.busy]) and loop.time() < deadline:
            tasks = [c.task for c in busy if c.task is not None]
            wait_s = min(deadline - loop.time(), 0.05 if len(tasks) < len(busy) else drain_s)
            if tasks:
                await asyncio.wait(tasks, timeout=wait_s)
            else:  # only bodies still coming: they become tasks or time out (408)
                await asyncio.sleep(wait_s)
        left = [c.task for c in self.connections if c.task is not None]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left)
        for conn in list(self.connections):
            conn.close()


class Connection(asyncio.Protocol):
    """One client connection while the front serves it (until it is handed to aiohttp or closes)."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.buf = b""
        self.task: asyncio.Task[None] | None = None
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.paused = False  # reading, while a pipelining client is far ahead
        self.write_paused = False  # writing, while the client does not read
        # The request head being parsed (httptools' callbacks fill them in).
        self.url = b""
        self.header_list: list[tuple[str, str]] = []
        self.head_done = False
        self.keep_alive = True
        # A request the front serves, while its body comes.
        self.pending: _Pending | None = None
        self.body_deadline = -1.0

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport
        self.front.connections.add(self)
        if self.front.closing:
            self.close()
            return
        self._idle()

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data
        if self.task is None and not self.write_paused:
            self._next()
        elif len(self.buf) > self.front.max_body_bytes + _MAX_HEAD and not self.paused:
            self.paused = True  # a pipelining client far ahead of its answers waits for them
            self._transport().pause_reading()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; a request in flight is cancelled (connection_lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.task is not None:
            self.task.cancel()  # the client is gone: the proxy closes the upstream request
        self.transport = None

    # ---- httptools callbacks -------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))

    def on_headers_complete(self) -> None:
        self.head_done = True
        self.keep_alive = self.parser.should_keep_alive()  # (reset once the message completes)

    # ---- serving -------------------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the next complete request in the buffer, or hand the connection to aiohttp."""
        buf = self.buf
        if not buf or self.transport is None:
            return
        if self.pending is None:
            end = buf.find(_HEAD_END, 0, _MAX_HEAD)
            if end < 0:
                if len(buf) >= _MAX_HEAD:
                    self._hand_off()
                return
            self.url = b""
            self.header_list = []
            self.head_done = False
            try:
                self.parser.feed_data(buf[: end + 4])
            except httptools.HttpParserError:
                self._hand_off()
                return
            self.pending = self._lean_head(end + 4)
            if self.pending is None:
                self._hand_off()
                return
        head_end, length, path, headers = self.pending
        if len(buf) < head_end + length:
            if self.deadline != self.body_deadline:  # the body's own deadline, from its head
                self.body_deadline = self.deadline = self.loop.time() + self.front.body_timeout_s
                self._arm()
            return
        body = buf[head_end : head_end + length]
        routed: RoutedBody | None = None
        try:  # noqa: SIM105 (contextlib.suppress would be three calls a request)
            routed = parse_body(body)
        except errors.RouterError:  # the proxy answers for a body it cannot parse
            pass
        if routed is not None and routed.stream:
            self._hand_off()  # a stream needs aiohttp's response writer
            return
        if length:
            try:
                self.parser.feed_data(body)  # the parser ends the message and expects the next one
            except httptools.HttpParserError:
                self._hand_off()
                return
        self.pending = None
        self.buf = buf[head_end + length :]
        self.deadline = 0.0  # busy: no deadline while the request is served
        request = LeanRequest("POST", path, headers, body)
        if routed is not None:
            request[ROUTED_BODY] = routed  # parsed once: the proxy takes it from here
        self.task = self.loop.create_task(self._serve(request, self.keep_alive))

    def _lean_head(self, head_end: int) -> _Pending | None:
        """(head end, body length, path, headers) when the front serves the request whose head was just
        parsed. The header checks are multidict look-ups (in C), not a Python loop over every header."""
        parser = self.parser
        if not self.head_done or parser.get_method() != b"POST" or parser.get_http_version() != "1.1":
            return None
        path = self.url.decode("utf-8", "surrogateescape")
        if path not in self.front.hot_paths or len(self.header_list) > _MAX_HEADERS:
            return None
        headers = CIMultiDict(self.header_list)
        if "transfer-encoding" in headers or "expect" in headers or "upgrade" in headers:
            return None
        lengths = headers.getall("content-length", ())
        if len(lengths) != 1 or not lengths[0].isdigit():
            return None
        length = int(lengths[0])
        if length > self.front.max_body_bytes:
            return None
        return head_end, length, path, CIMultiDictProxy(headers)

    async def _serve(self, request: LeanRequest, keep_alive: bool) -> None:
        # The proxy's answer, with the envelope for anything that escaped it (as the app's middleware).
        try:
            # (A LeanRequest stands in for web.Request: no cast() call on the hot path.)
            response = await self.front.handler(request)  # type: ignore[arg-type]
        except errors.RouterError as err:
            response = err.response(request.headers.get("x-request-id"))
        except (asyncio.CancelledError, ConnectionResetError):
            self.task = None
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            response = errors.internal_error().response(request.headers.get("x-request-id"))
        self.task = None
        transport = self.transport
        if transport is None:
            return
        keep_alive = keep_alive and not self.front.closing
        try:
            if isinstance(response, WholeAnswer):
                head, body = self._encode_whole(request, response, keep_alive)
            else:
                head, body = self._encode(request, response, keep_alive)
        except Exception:  # a header no HTTP head can carry (CR or LF in a value): as aiohttp, a 500
            log.exception("unsendable answer on %s %s", request.method, request.path)
            keep_alive = False
            head, body = self._encode(request, errors.internal_error().response(), keep_alive)
        if len(body) <= _JOIN_MAX:
            transport.write(head + body)
        else:  # a large body is not copied to join it to its head
            transport.writelines((head, body))
        if not keep_alive:
            self.close()
            return
        self._idle()
        if not self.write_paused:
            self._go_on()

    def _go_on(self) -> None:
        """Read and serve what the client sent next (held while the last answer could not be sent)."""
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        if self.buf and self.task is None:
            self._next()

    def pause_writing(self) -> None:
        self.write_paused = True  # a client not reading its answers gets no more until it does

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.task is None:
            self._go_on()

    @property
    def busy(self) -> bool:
        return self.task is not None or self.pending is not None

    def _encode(
        self, request: LeanRequest | None, response: web.StreamResponse, keep_alive: bool
    ) -> tuple[bytes, bytes]:
        """The answer's head and body (the head with the headers aiohttp's server would add)."""
        body = cast(web.Response, response).body
        if not isinstance(body, bytes):  # every answer of the proxy to a non-streamed request is bytes
            body = b"" if body is None else bytes(cast(Any, body)._value)
        headers = response.headers
        rate = request.get(RATE_HEADERS) if request is not None else None
        if rate:
            headers.update(rate)
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Content-Type", "application/octet-stream")
        if "Date" not in headers:
            headers["Date"] = self.front.clock.date(self.loop.time())
        headers.setdefault("Server", SERVER_SOFTWARE)
        if not keep_alive:
            headers["Connection"] = "close"
        head: bytes = _serialize_headers(f"HTTP/1.1 {response.status} {response.reason}", headers)
        return head, body

    def _encode_whole(
        self, request: LeanRequest, answer: WholeAnswer, keep_alive: bool
    ) -> tuple[bytes, bytes]:
        """A pod's whole answer's head, written here (the headers ``_encode`` would write)."""
        body = answer.body
        rate: dict[str, str] | None = request.get(RATE_HEADERS)
        dropped = _NOT_FORWARDED if not rate else _NOT_FORWARDED | {name.lower() for name in rate}
        fields = [(name, value) for name, value in answer.headers if name.lower() not in dropped]
        if rate:
            fields.extend(rate.items())
        has_type = any(name.lower() == "content-type" for name, _ in fields)
        fields.append(("x-request-id", answer.request_id))
        lines = "\r\n".join(map(": ".join, fields))  # in C (a format per line cost ~1k instructions)
        # As aiohttp's writer: no CR or LF inside a name or value (the caller answers 500 instead).
        if lines.count("\n") != len(fields) - 1 or lines.count("\r") != len(fields) - 1:
            raise ValueError("a header with CR or LF")
        status = answer.status
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n{lines}\r\n{'' if has_type else _DEFAULT_TYPE}"
            f"Content-Length: {len(body)}\r\nDate: {self.front.clock.date(self.loop.time())}\r\n"
            f"Server: {SERVER_SOFTWARE}\r\n{'' if keep_alive else _CLOSE}\r\n"
        )
        return head.encode("utf-8", "surrogateescape"), body

    # ---- connection state ------------------------------------------------------------------------------

    def _idle(self) -> None:
        """Start the header deadline: the next request's head must come within it."""
        self.deadline = self.loop.time() + self.front.header_timeout_s
        self._arm()

    def _arm(self) -> None:
        # One timer per connection, moved lazily: most deadlines are pushed back before they fire.
        if self.timer is not None and self.timer.when() > self.deadline:
            self.timer.cancel()
            self.timer = None
        if self.timer is None:
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self.timer = None
        if self.task is not None or self.transport is None or self.deadline == 0.0:
            return  # serving: the deadline starts again after the answer
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._check_deadline)
        elif self.pending is not None:  # the body did not come in time: 408, as aiohttp's path does
            err = errors.body_timeout(self.front.body_timeout_s)
            head, body = self._encode(None, err.response(), keep_alive=False)
            self.transport.write(head + body)
            self.close()
        else:
            self.close()

    def _hand_off(self) -> None:
        """aiohttp's server takes this connection from here, starting with the request in ``buf``."""
        transport = self._transport()
        self.front.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        protocol = self.front.aiohttp_protocol()
        self.transport = None
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.paused:
            self.paused = False
            transport.resume_reading()
        buf, self.buf = self.buf, b""
        if buf:
            protocol.data_received(buf)

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class FrontSite(web.BaseSite):
    """A TCP site whose connections start in the front (an aiohttp ``TCPSite`` otherwise)."""

    __slots__ = ("_front", "_host", "_port", "_reuse_port")

    def __init__(
        self, runner: web.BaseRunner, front: Front, host: str, port: int, *, reuse_port: bool
    ) -> None:
        super().__init__(runner, backlog=1024)
        self._front = front
        self._host = host
        self._port = port
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._front,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port,
        )


__all__ = ["Front", "FrontSite", "LeanRequest", "WholeAnswer"]
