"""A client cannot stall, crash or probe the router: bounded bodies and header time, 400 for what it
cannot parse (never a retried 500), a 4xx from a pod is never retried, and /metrics is off the API port."""

from __future__ import annotations

import contextlib
import json
import time

import pytest

from tests.fixtures.openai_spec import assert_matches
from tests.fixtures.raw_http import closed_by_peer, connect, exchange, read_response
from tests.integration.router.conftest import Stack
from tests.integration.router.procs import Proc
from tests.integration.router.test_routing import stats
from tests.support.net import http_get

pytestmark = pytest.mark.timeout(120)

LIMIT = 4096
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


def _router(stack: Stack, *backends: Proc, limit: int = LIMIT) -> Proc:
    return stack.router(
        {"m": [b.url for b in backends]},
        max_body_bytes=limit,
        read_header_timeout_s=HEADER_TIMEOUT_S,
        read_body_timeout_s=BODY_TIMEOUT_S,
    )


def _post(body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def _assert_envelope(status: int, headers: dict[str, str], body: bytes, expected: int) -> dict[str, str]:
    assert status == expected, body
    assert headers["content-type"].startswith("application/json")
    payload = json.loads(body)
    assert_matches("ErrorResponse", payload)
    return dict(payload["error"])


def test_a_chunked_body_over_the_limit_is_413_before_a_pod_sees_it(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"x" * 1024
        with contextlib.suppress(OSError):  # the router may stop reading once it has seen enough
            for _ in range(LIMIT // len(piece) + 4):
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, headers, body = read_response(sock)
    assert _assert_envelope(status, headers, body, 413)["code"] == "request_too_large"
    assert stats(a.url)["requests"] == 0


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 5000 + b"]" * 5000, id="5000-nested-arrays"),
        pytest.param(b'{"model": "m", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", id="deep-field"),
        pytest.param(b'{"model": "\\ud800", "messages": []}', id="lone-surrogate-model"),
        pytest.param(
            b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}',
            id="lone-surrogate-content",
        ),
        pytest.param(b'{"model": "m", "messages": [{"role": "user", "content": "\xff"}]}', id="invalid-utf8"),
        pytest.param(b'{"model": "m", "input": "a\xed\xa0\x80b"}', id="raw-surrogate-bytes"),
    ],
)
def test_a_body_the_router_cannot_parse_is_400_and_reaches_no_pod(stack: Stack, body: bytes) -> None:
    a, b = stack.backend("a"), stack.backend("b")
    router = _router(stack, a, b, limit=64 * 1024)
    status, headers, raw = exchange(router.port, _post(body))
    assert _assert_envelope(status, headers, raw, 400)["type"] == "invalid_request_error"
    assert stats(a.url)["requests"] == stats(b.url)["requests"] == 0
    assert 'code="500"' not in http_get(router.metrics_url)[1].decode()


def test_a_valid_surrogate_pair_is_routed(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    body = b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    status, _, raw = exchange(router.port, _post(body))
    assert status == 200, raw


def test_expect_100_continue_on_a_hot_path_is_answered_then_routed(stack: Stack) -> None:
    # The hot paths skip aiohttp's router (app.direct_handler) except with Expect, which it answers.
    a = stack.backend("a")
    router = _router(stack, a)
    body = b'{"model": "m", "messages": []}'
    with connect(router.port) as sock:
        head = _post(body)[: -len(body)].replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
        sock.sendall(head)
        assert read_response(sock)[0] == 100
        sock.sendall(body)
        status, headers, raw = read_response(sock)
    assert status == 200, raw
    assert headers["x-request-id"]
    assert stats(a.url)["requests"] == 1


def test_a_pods_4xx_is_relayed_once_never_retried_on_other_pods(stack: Stack) -> None:
    a, b = stack.backend("a", "--fail-status", "400"), stack.backend("b", "--fail-status", "400")
    router = _router(stack, a, b)
    status, _, raw = exchange(router.port, _post(b'{"model": "m", "messages": []}'))
    assert status == 400, raw
    assert stats(a.url)["requests"] + stats(b.url)["requests"] == 1


def test_slow_headers_are_cut_off_while_the_router_keeps_answering(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    socks = [connect(router.port) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # a header line now and then must not extend the deadline
            time.sleep(HEADER_TIMEOUT_S / 3)
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
        assert http_get(router.url + "/healthz")[0] == 200
        closed = sum(closed_by_peer(sock, HEADER_TIMEOUT_S + 4) for sock in socks)
        assert closed == len(socks)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 8
    finally:
        for sock in socks:
            sock.close()


def test_a_body_that_stops_arriving_gets_408(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    with connect(router.port) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 200\r\n\r\n{"model": "m", '
        )
        started = time.monotonic()
        status, headers, body = read_response(sock)
    assert _assert_envelope(status, headers, body, 408)["code"] == "request_timeout"
    assert time.monotonic() - started < BODY_TIMEOUT_S + 4
    assert stats(a.url)["requests"] == 0


def test_metrics_are_served_on_their_own_port_only(stack: Stack) -> None:
    a = stack.backend("a")
    router = _router(stack, a)
    status, body = http_get(router.url + "/metrics")
    assert status == 404
    assert b"modelyard_router" not in body
    status, body = http_get(router.metrics_url)
    assert status == 200
    assert b"modelyard_router_requests_total" in body
    assert http_get(router.metrics_url.replace("/metrics", "/v1/models"))[0] == 404
