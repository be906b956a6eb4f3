"""The lean upstream client (upstream_http.py) against a real TCP server that writes exact bytes."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from modelyard.router.upstream_http import ConnectFailed, UpstreamClient

# Reads one request (head + Content-Length body) and returns what to write back (None: write nothing).
Script = Callable[[int, bytes], bytes | None]


class Pod:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self.disconnects = 0
        self.base = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                out = self.script(len(self.requests), request)
                if out is None:
                    await reader.read()  # silent until the client goes away
                    self.disconnects += 1
                    return
                writer.write(out)
                await writer.drain()
                if b"connection: close" in out.lower():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.disconnects += 1
        finally:
            writer.close()


@asynccontextmanager
async def pod(script: Script) -> AsyncIterator[Pod]:
    p = Pod(script)
    server = await asyncio.start_server(p.serve, "127.0.0.1", 0)
    p.base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield p
    finally:
        server.close()


def client(**kw: float) -> UpstreamClient:
    return UpstreamClient(kw.get("connect", 2.0), kw.get("read", 5.0), kw.get("keepalive", 30.0))


HEADERS = [("Content-Type", "application/json"), ("x-request-id", "r1")]


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (
        len(body),
        extra,
        body,
    )


async def test_request_bytes_and_a_content_length_answer_on_one_reused_connection() -> None:
    async with pod(lambda n, req: ok(b'{"n":%d}' % n)) as p:
        c = client()
        first = await c.send(p.base, "POST", "/v1/chat/completions?x=1", HEADERS, b'{"model":"m"}')
        second = await c.send(p.base, "POST", "/v1/chat/completions", HEADERS, b"{}")
        c.close()
    assert (first.status, first.body, second.body) == (200, b'{"n":1}', b'{"n":2}')
    assert ("Content-Type", "application/json") in first.headers
    assert p.connections == 1
    head, body = p.requests[0].split(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /v1/chat/completions?x=1 HTTP/1.1"
    assert f"Host: {p.base[len('http://') :]}".encode() in lines
    assert b"x-request-id: r1" in lines
    assert b"Content-Length: 13" in lines
    assert body == b'{"model":"m"}'


async def test_chunked_answer_with_an_interim_100_and_trailers() -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with pod(lambda n, req: answer) as p:
        c = client()
        a = await c.send(p.base, "POST", "/", [], b"")
        b = await c.send(p.base, "POST", "/", [], b"")
        c.close()
    assert (a.status, a.body, b.body) == (200, b"hello world", b"hello world")
    assert p.connections == 1


async def test_a_body_until_close_and_connection_close_are_not_reused() -> None:
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it"
    async with pod(lambda n, req: until_close) as p:
        c = client()
        assert (await c.send(p.base, "POST", "/", [], b"")).body == b"all of it"
        assert (await c.send(p.base, "POST", "/", [], b"")).body == b"all of it"
        c.close()
    assert p.connections == 2


@pytest.mark.parametrize(
    "answer",
    [b"garbage\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"],
)
async def test_an_answer_that_is_not_http_is_a_disconnect(answer: bytes) -> None:
    async with pod(lambda n, req: answer) as p:
        c = client()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await c.send(p.base, "POST", "/", [], b"")
        c.close()


async def test_a_connection_cut_mid_body_is_a_disconnect() -> None:
    short = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"
    async with pod(lambda n, req: short) as p:
        c = client()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await c.send(p.base, "POST", "/", [], b"")
        c.close()


async def test_silence_longer_than_the_read_timeout_drops_the_connection() -> None:
    async with pod(lambda n, req: None) as p:
        c = client(read=0.2)
        with pytest.raises(aiohttp.SocketTimeoutError):
            await c.send(p.base, "POST", "/", [], b"")
        c.close()
        for _ in range(100):
            if p.disconnects:
                break
            await asyncio.sleep(0.01)
    assert p.disconnects == 1


async def test_cancelling_drops_the_connection_so_the_pod_sees_the_client_leave() -> None:
    async with pod(lambda n, req: None) as p:
        c = client()
        task = asyncio.ensure_future(c.send(p.base, "POST", "/", [], b"{}"))
        for _ in range(100):
            if p.requests:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if p.disconnects:
                break
            await asyncio.sleep(0.01)
        c.close()
    assert p.disconnects == 1


async def test_a_refused_connection_is_connect_failed() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectFailed):
        await client().send(f"http://127.0.0.1:{port}", "POST", "/", [], b"")


async def test_the_connection_cap_reuses_rather_than_opens() -> None:
    async with pod(lambda n, req: ok()) as p:
        c = UpstreamClient(2.0, 5.0, 30.0, max_connections=2)
        answers = await asyncio.gather(*(c.send(p.base, "POST", "/", [], b"") for _ in range(10)))
        c.close()
    assert all(a.status == 200 for a in answers)
    assert p.connections <= 2


SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
)


async def test_open_reads_a_chunked_stream_and_releases_the_connection_for_reuse() -> None:
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in (b"data: 1\n\n", b"data: [DONE]\n\n"))
    async with pod(lambda n, req: SSE_HEAD + b"\r\n" + events + b"0\r\n\r\n") as p:
        c = client()
        for _ in range(2):
            answer = await c.open(p.base, "POST", "/v1/completions", HEADERS, b"{}")
            assert (answer.status, answer.content_type) == (200, "text/event-stream")
            assert answer.headers["content-type"].startswith("text/event-stream")
            got = b""
            while chunk := await answer.content.readany():
                got += chunk
            assert got == b"data: 1\n\ndata: [DONE]\n\n"
            assert answer.content.at_eof()
            answer.release()
        c.close()
    assert p.connections == 1


async def test_a_stream_cut_mid_way_gives_its_data_then_a_disconnect() -> None:
    cut = SSE_HEAD + b"Connection: close\r\n\r\n9\r\ndata: 1\n\n\r\n"
    async with pod(lambda n, req: cut) as p:
        c = client()
        answer = await c.open(p.base, "POST", "/", [], b"")
        assert await answer.content.readany() == b"data: 1\n\n"
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await answer.content.readany()
        assert not answer.content.at_eof()
        answer.close()
        c.close()


async def test_a_pod_resetting_each_connection_at_once_fails_requests_now_not_at_the_read_timeout() -> None:
    # A pod dying as it accepts: the reset can arrive before the request is written, and a request
    # written to a connection already gone must fail then (and may go to another pod: nothing was sent).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def reset_each() -> None:
        while True:
            conn, _ = await loop.sock_accept(listener)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    class BusyLoop(UpstreamClient):
        async def _connect(self, base: str, origin: Any) -> Any:
            conn = await super()._connect(base, origin)
            await asyncio.sleep(0.02)  # other requests' work: the reset comes in before this one is written
            return conn

    resetter = asyncio.ensure_future(reset_each())
    c = BusyLoop(2.0, 60.0, 30.0)
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        async with asyncio.timeout(10):
            for _ in range(20):
                with pytest.raises(aiohttp.ClientConnectionError):
                    await c.send(base, "POST", "/v1/chat/completions", HEADERS, b"{}")
    finally:
        resetter.cancel()
        c.close()
        listener.close()
