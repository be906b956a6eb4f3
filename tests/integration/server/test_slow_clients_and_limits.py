"""One client must not stall or bloat a server: body limits hold while reading, slow clients are cut off,
``/v1/models`` hides the weights' path, and a GPU model that sees no GPU refuses to serve."""

from __future__ import annotations

import contextlib
import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.models import REPO_ROOT, ServerProcess, _server_env, running_server
from tests.fixtures.openai_spec import assert_matches
from tests.fixtures.processes import popen_dying_with_parent
from tests.fixtures.raw_http import closed_by_peer, connect, read_response
from tests.support.net import free_port

pytestmark = pytest.mark.model

LIMIT = 4096
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def strict_server(tiny_llama_path: Path, server_logs_dir: Path) -> Iterator[ServerProcess]:
    args = [
        "--model", str(tiny_llama_path), "--served-model-name", "strict", "--dtype", "float32",
        "--max-model-len", "256", "--max-request-bytes", str(LIMIT),
        "--read-header-timeout", str(HEADER_TIMEOUT_S), "--read-body-timeout", str(BODY_TIMEOUT_S),
    ]  # fmt: skip
    with running_server(args, log_dir=server_logs_dir) as server:
        yield server


def _assert_envelope(status: int, body: bytes, expected: int, code: str) -> None:
    assert status == expected, body
    payload = json.loads(body)
    assert_matches("ErrorResponse", payload)
    assert payload["error"]["code"] == code


def test_a_chunked_body_over_the_limit_is_refused_while_reading(strict_server: ServerProcess) -> None:
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"x" * 1024
    with connect(strict_server.port) as sock:
        sock.sendall(head.encode())
        start = b'{"model":"strict","prompt":"'
        sock.sendall(b"%x\r\n%s\r\n" % (len(start), start))
        for _ in range(LIMIT // len(piece) + 2):
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (and may close): stop sending, as a real client would
            try:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            except (BrokenPipeError, ConnectionResetError):
                break  # refused while we were still writing: the answer is already on its way
        status, headers, body = read_response(sock)
    _assert_envelope(status, body, 413, "request_too_large")
    assert headers["connection"] == "close"
    assert strict_server.get("/health")[0] == 200


def test_a_chunked_body_within_the_limit_is_served(strict_server: ServerProcess) -> None:
    payload = json.dumps({"model": "strict", "prompt": "Hello", "max_tokens": 2}).encode()
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    with connect(strict_server.port) as sock:
        sock.sendall(head.encode())
        for i in range(0, len(payload), 16):
            part = payload[i : i + 16]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        sock.sendall(b"0\r\n\r\n")
        status, _, body = read_response(sock)
    assert status == 200, body
    assert json.loads(body)["object"] == "text_completion"


def test_slow_headers_are_cut_off_while_the_server_keeps_answering(strict_server: ServerProcess) -> None:
    """Slow-loris, bounded: 50 connections trickling header bytes are all closed after the deadline."""
    socks = [connect(strict_server.port) for _ in range(50)]
    try:
        started = time.monotonic()
        for sock in socks:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # keep trickling: a byte now and then must not extend the deadline
            time.sleep(HEADER_TIMEOUT_S / 3)
            for sock in socks:
                with contextlib.suppress(OSError):  # already closed: what the test wants
                    sock.sendall(b"X-Slow: 1\r\n")
        status, _ = strict_server.get("/health", timeout=2)
        assert status == 200
        closed = sum(closed_by_peer(sock, within_s=HEADER_TIMEOUT_S + 4) for sock in socks)
        assert closed == len(socks)
        assert time.monotonic() - started < HEADER_TIMEOUT_S + 8
    finally:
        for sock in socks:
            sock.close()


def test_an_idle_connection_that_never_sends_is_closed(strict_server: ServerProcess) -> None:
    with connect(strict_server.port) as sock:
        assert closed_by_peer(sock, within_s=HEADER_TIMEOUT_S + 4)


def test_a_body_that_stops_arriving_gets_408(strict_server: ServerProcess) -> None:
    head = (
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 200\r\n\r\n"
    )
    with connect(strict_server.port) as sock:
        sock.sendall(head.encode() + b'{"model": "strict", ')
        started = time.monotonic()
        status, headers, body = read_response(sock)
    _assert_envelope(status, body, 408, "request_timeout")
    assert time.monotonic() - started < BODY_TIMEOUT_S + 4
    assert headers["connection"] == "close"


def test_keep_alive_still_serves_several_requests(strict_server: ServerProcess) -> None:
    with connect(strict_server.port) as sock:
        for _ in range(2):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status == 200


def test_models_never_show_the_weights_path(strict_server: ServerProcess, tiny_llama_path: Path) -> None:
    for path in ("/v1/models", "/v1/models/strict"):
        status, body = strict_server.get(path)
        assert status == 200
        assert str(tiny_llama_path) not in body.decode()
        assert "tiny-models" not in body.decode()
    assert json.loads(strict_server.get("/v1/models/strict")[1])["root"] == "strict"


def test_device_cuda_without_a_gpu_fails_loudly_instead_of_serving_on_cpu(tiny_llama_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the failure it checks cannot happen here")
    port = free_port()
    cmd = [sys.executable, "-m", "modelyard.server", "--model", str(tiny_llama_path), "--device", "cuda",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = popen_dying_with_parent(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_server_env(None), cwd=REPO_ROOT
    )
    try:
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert b"--device cuda was requested but torch sees no CUDA device" in out
