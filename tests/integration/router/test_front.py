"""The router's own HTTP/1.1 front (front.py), over raw sockets against a real router process: keep-alive,
pipelining, bodies that come late, ``Connection: close``, connections that change hands to aiohttp
mid-way (a stream, another path, HTTP/1.0), hostile bytes, half-closed sockets, disconnects and
SIGTERM with a request in flight."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import pytest

from tests.fixtures.openai_spec import assert_matches
from tests.fixtures.raw_http import closed_by_peer, connect, read_response
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.integration.router.test_routing import stats
from tests.support.net import http_get

pytestmark = pytest.mark.timeout(120)

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


def _router(stack: Stack, *backends: Proc) -> Proc:
    return stack.router(
        {"m": [b.url for b in backends]},
        read_header_timeout_s=HEADER_TIMEOUT_S,
        read_body_timeout_s=BODY_TIMEOUT_S,
    )


def _body(text: str = "hi", **extra: object) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": text}], **extra}).encode()


def _post(body: bytes, *extra_headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    head = b"POST /v1/chat/completions " + version + b"\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"".join(h + b"\r\n" for h in extra_headers)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def _read_chunked(sock: socket.socket) -> tuple[int, bytes]:
    """A chunked response's status and its raw body, read up to the last chunk."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower(), head
    while not body.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, body
        body += chunk
    return int(head.split()[1]), body


def _read_answers(sock: socket.socket, count: int) -> list[tuple[int, dict[str, str], bytes]]:
    """``count`` responses in a row from one connection (read_response may read past its own)."""
    stream = sock.makefile("rb")
    answers = []
    for _ in range(count):
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        answers.append((status, headers, stream.read(int(headers["content-length"]))))
    return answers


def _serves(router: Proc) -> None:
    """The router still answers a plain request on a new connection."""
    with connect(router.port) as sock:
        sock.sendall(_post(_body()))
        status, _, body = read_response(sock)
    assert status == 200, body


def test_a_keep_alive_connection_gets_every_answer_and_the_pod_every_body_unchanged(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    # Odd spacing and key order: the body must reach the pod as these bytes, not re-encoded.
    bodies = [b'{"messages":[{"role":"user","content":"n%d"}],  "model" : "m"}' % i for i in range(3)]
    with connect(router.port) as sock:
        for body in bodies:
            sock.sendall(_post(body))
            status, headers, answer = read_response(sock)
            assert status == 200, answer
            assert headers["content-type"].startswith("application/json")
            assert headers["x-request-id"]
            assert json.loads(answer)["object"] == "chat.completion"
    assert stats(a.url)["bodies"][-3:] == [b.decode() for b in bodies]


def test_a_json_answer_has_the_same_headers_from_the_front_as_from_aiohttps_path(stack: Stack) -> None:
    """The front writes a pod's whole answer's head itself: the same headers as aiohttp's path (a chunked
    request body goes there), in the raw bytes: one Content-Length, Date, Server, the request's id."""
    router = _router(stack, stack.backend("a"))
    body = _body()
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"x-request-id: rid-2\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
    ) % (len(body), body)
    heads = []
    for raw in (_post(body, b"x-request-id: rid-1"), chunked):
        with connect(router.port) as sock:
            sock.sendall(raw)
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
        heads.append(data.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n"))
    front, aiohttp_path = (
        {k.lower(): v for k, _, v in (h.partition(": ") for h in head[1:])} for head in heads
    )
    assert heads[0][0] == heads[1][0] == "HTTP/1.1 200 OK"
    assert sorted(front) == sorted(aiohttp_path)  # no name twice (a dict would hide it): next line
    assert len(heads[0]) == len(heads[1])
    assert front.pop("x-request-id") == "rid-1"
    assert aiohttp_path.pop("x-request-id") == "rid-2"
    front.pop("date"), aiohttp_path.pop("date")
    front.pop("content-length"), aiohttp_path.pop("content-length")  # the completion ids differ
    assert front == aiohttp_path
    assert front["x-backend"] == "a"


def test_pipelined_requests_are_answered_in_order(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    ids = [f"pipelined-{i}" for i in range(4)]
    with connect(router.port) as sock:
        sock.sendall(b"".join(_post(_body(), b"x-request-id: " + i.encode()) for i in ids))
        answers = _read_answers(sock, len(ids))
    assert [status for status, _, _ in answers] == [200] * len(ids)
    assert [headers["x-request-id"] for _, headers, _ in answers] == ids


def test_a_body_sent_after_its_head_is_waited_for(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    raw = _post(_body("late"))
    head, _, body = raw.partition(b"\r\n\r\n")
    with connect(router.port) as sock:
        sock.sendall(head + b"\r\n\r\n")
        time.sleep(BODY_TIMEOUT_S / 3)
        sock.sendall(body[:5])
        time.sleep(BODY_TIMEOUT_S / 3)
        sock.sendall(body[5:])
        status, _, answer = read_response(sock)
    assert status == 200, answer
    assert stats(a.url)["bodies"][-1] == body.decode()


def test_connection_close_is_honoured(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(_post(_body(), b"Connection: close"))
        status, headers, _ = read_response(sock)
        assert status == 200
        assert headers["connection"] == "close"
        assert closed_by_peer(sock, 5)


def test_an_idle_keep_alive_connection_is_closed_after_the_header_deadline(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(_post(_body()))
        assert read_response(sock)[0] == 200
        started = time.monotonic()
        assert closed_by_peer(sock, HEADER_TIMEOUT_S + 4)
        assert time.monotonic() - started >= HEADER_TIMEOUT_S * 0.9


def test_a_connection_changes_hands_for_a_stream_another_path_and_keeps_working(stack: Stack) -> None:
    a = stack.backend("a", "--chunks", "3")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(_post(_body()))  # served by the front
        assert read_response(sock)[0] == 200
        sock.sendall(_post(_body(stream=True)))  # a stream: aiohttp's from here on
        status, events = _read_chunked(sock)
        assert status == 200
        assert b"data: [DONE]" in events
        sock.sendall(_post(_body()))
        assert read_response(sock)[0] == 200
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, models = read_response(sock)
        assert status == 200
        assert [m["id"] for m in json.loads(models)["data"]] == ["m"]
    with connect(router.port) as sock:  # another path first, then a hot one
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        sock.sendall(_post(_body()))
        assert read_response(sock)[0] == 200


def test_http_1_0_is_answered_and_closed(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(_post(_body(), version=b"HTTP/1.0"))
        status, _, body = read_response(sock)
        assert status == 200, body
        assert closed_by_peer(sock, 5)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00\xff garbage \x16\x03\x01\r\n\r\n", id="binary-then-head-end"),
        pytest.param(b"POST /v1/chat/completions HTTP/9.9\r\nHost: x\r\n\r\n", id="bad-version"),
        pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: x\r\n\r\n", id="bad-length"),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
            id="two-lengths",
        ),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n", id="huge-header"
        ),
        pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\n" + b"a" * 40_000, id="head-without-end"),
        pytest.param(b"POST /v1/chat/completions HTTP/1.1\r\nBad Header\r\n\r\n", id="header-without-colon"),
        pytest.param(
            b"POST /v1/chat/completions HTTP/1.1\r\n"
            + b"".join(b"h%d: 1\r\n" % i for i in range(200))
            + b"Content-Length: %d\r\n\r\n%s" % (len(_body()), _body()),
            id="too-many-headers",
        ),
    ],
)
def test_hostile_bytes_get_a_400_class_answer_or_a_close_and_the_router_stays_up(
    stack: Stack, raw: bytes
) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        try:
            sock.sendall(raw)
            status, headers, body = read_response(sock)
        except (AssertionError, OSError):
            pass  # closed without an answer
        else:
            assert 400 <= status < 500, body
            if headers.get("content-type", "").startswith("application/json"):
                assert_matches("ErrorResponse", json.loads(body))
    _serves(router)
    assert stats(a.url)["requests"] == 1  # only the good request reached the pod


def test_a_half_closed_client_leaks_no_request(stack: Stack) -> None:
    a = stack.backend("a", "--delay-s", "0.3")
    router = _router(stack, a)
    for _ in range(5):
        with connect(router.port) as sock:
            sock.sendall(_post(_body()))
            sock.shutdown(socket.SHUT_WR)
            # An answer, or a close: either is fine; the router must not keep the request.
            with contextlib.suppress(AssertionError, OSError):
                read_response(sock)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        load = json.loads(http_get(router.metrics_base + "/autoscaler/load")[1])
        if all(m["inFlight"] == 0 for m in load["models"]):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"requests still in flight: {load}")
    _serves(router)


def test_a_client_hanging_up_cancels_its_json_request_upstream(stack: Stack) -> None:
    # The pod: a socket that takes the request, never answers, and notes when the router hangs up.
    pod = socket.create_server(("127.0.0.1", 0))
    got_request = threading.Event()
    hung_up = threading.Event()

    def serve_one() -> None:
        conn, _ = pod.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            got_request.set()
            conn.settimeout(30)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass
            hung_up.set()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    router = stack.router({"m": [f"http://127.0.0.1:{pod.getsockname()[1]}"]})
    try:
        with connect(router.port) as sock:
            sock.sendall(_post(_body()))
            assert got_request.wait(10), "the request never reached the pod"
        assert hung_up.wait(10), "the router kept its upstream request open"
        deadline = time.monotonic() + 10
        while True:
            metrics = http_get(router.metrics_url)[1].decode()
            if 'modelyard_router_requests_total{code="499",key="",model="m"} 1.0' in metrics:
                break
            assert time.monotonic() < deadline, "the hang-up was not counted as a 499"
            time.sleep(0.05)
    finally:
        pod.close()


def test_sigterm_lets_a_json_request_and_a_stream_in_flight_finish(stack: Stack) -> None:
    a = stack.backend("a", "--delay-s", "1.0", "--chunks", "3")
    router = _router(stack, a)
    answers: list[int] = []
    streams: list[bytes] = []

    def ask() -> None:  # served by the front
        with connect(router.port) as sock:
            sock.sendall(_post(_body()))
            answers.append(read_response(sock)[0])

    def stream() -> None:  # handed to aiohttp
        with connect(router.port) as sock:
            sock.sendall(_post(_body(stream=True)))
            streams.append(_read_chunked(sock)[1])

    with connect(router.port) as idle:  # an idle keep-alive connection is closed, not waited for
        idle.sendall(_post(_body("first")))
        threads = [threading.Thread(target=ask), threading.Thread(target=stream)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while stats(a.url)["in_flight"] != 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert read_response(idle)[0] == 200
        started = time.monotonic()
        assert router.terminate() == 0
        assert time.monotonic() - started < 5  # both drains at once, neither waits out its limit
        for thread in threads:
            thread.join(10)
        assert closed_by_peer(idle, 1)
    assert answers == [200]
    assert len(streams) == 1
    assert b"data: [DONE]" in streams[0]


def test_a_client_that_pipelines_without_reading_gets_every_answer_in_order(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    filler = "x" * 20_000  # answers echo nothing of it, but the requests fill the router's buffers
    ids = [f"r{i}" for i in range(60)]
    with connect(router.port) as sock:
        sock.sendall(b"".join(_post(_body(filler), b"x-request-id: " + i.encode()) for i in ids))
        time.sleep(HEADER_TIMEOUT_S / 2)  # not reading meanwhile
        answers = _read_answers(sock, len(ids))
    assert [headers["x-request-id"] for _, headers, _ in answers] == ids
    assert {status for status, _, _ in answers} == {200}


def test_a_large_body_in_many_pieces_reaches_the_pod_unchanged(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    body = _body("y" * 300_000)
    raw = _post(body)
    with connect(router.port) as sock:
        for at in range(0, len(raw), 7_000):
            sock.sendall(raw[at : at + 7_000])
        status, _, answer = read_response(sock)
    assert status == 200, answer
    assert stats(a.url)["bodies"][-1] == body.decode()
