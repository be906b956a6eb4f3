"""The router's own RESP client (router/resp.py) against a real redis-server: pipelining, scripts,
AUTH, the db index, TLS, timeouts, and a new connection after the old one broke."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelyard.router.keys import parse_keys
from modelyard.router.metrics import RouterMetrics
from modelyard.router.resp import ReplyError, RespClient, StoreError, StoreTimeout
from modelyard.router.settings import RouterSettings
from modelyard.router.store import SharedStore, connect
from modelyard.router.store_types import StoreDown
from tests.fixtures.processes import popen_dying_with_parent
from tests.integration.router.procs import free_port, wait_until
from tests.integration.router.redis_server import RedisServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path, password="pw-0123").start()
    try:
        yield s
    finally:
        s.kill()


async def test_pipelined_calls_get_their_own_replies_in_order(server: RedisServer) -> None:
    client = RespClient(server.url)
    try:
        replies = await asyncio.gather(*(client.call("INCR", "n") for _ in range(300)))
        assert replies == list(range(1, 301))  # answered in the order sent
        clients = (await client.call("CLIENT", "LIST")).decode().strip().splitlines()
        assert len(clients) == 1  # the 300 first calls shared one connection attempt
        await client.call("SET", "big", b"x" * 200_000)  # a reply that comes in several reads
        assert await client.call("GET", "big") == b"x" * 200_000
        assert await client.call("GET", "absent") is None
        assert await client.call("MGET", "n", "absent") == [b"300", None]
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await client.call("LPUSH", "n", "1")
        assert await client.call("PING") == "PONG"  # the error did not break the connection
    finally:
        await client.aclose()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_next(server: RedisServer) -> None:
    client = RespClient(server.url)
    try:
        await client.call("SET", "k", "v")
        waiter = asyncio.ensure_future(client.call("INCR", "counter"))
        await asyncio.sleep(0)
        waiter.cancel()
        assert await client.call("GET", "k") == b"v"
        assert await client.call("GET", "counter") == b"1"  # the cancelled command ran all the same
    finally:
        await client.aclose()


async def test_password_apart_from_the_url_and_the_db_index(server: RedisServer) -> None:
    url = f"redis://127.0.0.1:{server.port}/3"
    assert server.password is not None
    db3 = RespClient(url, password=server.password)
    db0 = RespClient(server.url)
    try:
        await db3.call("SET", "where", "three")
        assert await db3.call("GET", "where") == b"three"
        assert await db0.call("GET", "where") is None
        with pytest.raises(ReplyError):
            await RespClient(url, password="wrong-password").call("PING")
        with pytest.raises(ReplyError, match="NOAUTH"):
            await RespClient(url).call("GET", "where")
    finally:
        await db3.aclose()
        await db0.aclose()


async def test_no_store_and_a_store_that_never_answers_fail_within_the_timeout() -> None:
    with pytest.raises(StoreError):
        await RespClient(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.3).call("PING")
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    try:
        port = silent.getsockname()[1]
        client = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreTimeout):
            await client.call("PING")
        assert asyncio.get_running_loop().time() - started < 3
        await client.aclose()
    finally:
        silent.close()


async def test_a_store_that_was_not_there_is_reached_once_it_is(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    client = RespClient(server.url, timeout_s=0.3)
    try:
        for _ in range(2):
            with pytest.raises(StoreError):
                await client.call("PING")
        server.start()
        assert await client.call("PING") == "PONG"
    finally:
        await client.aclose()
        server.kill()


async def test_a_restarted_store_gets_a_new_connection_and_its_scripts_again(tmp_path: Path) -> None:
    server = RedisServer(tmp_path).start()
    settings = RouterSettings(_cli_parse_args=[], store_url=server.url)  # type: ignore[call-arg,arg-type]
    store = SharedStore(connect(settings), settings, RouterMetrics())
    (spec,) = parse_keys("keys: [{name: t, key: sk-tttttttt, requestsPerMinute: 100, maxConcurrent: 4}]")
    try:
        lease = await store.admit(spec, 10)
        await store.settle(spec, lease, -5)
        server.kill()
        with pytest.raises(StoreDown):
            await store.admit(spec, 10)
        assert not store.up
        server.start()  # same port, empty: no scripts loaded, no counters
        await store.check()
        assert store.up
        lease = await store.admit(spec, 10)  # EVALSHA answered NOSCRIPT; EVAL loaded it
        assert lease.rate.remaining_requests == 99
        assert lease.usage.tokens_day == 10
        assert await store.client.call("ZCARD", "modelyard:{t}:leases") == 1
        await store.settle(spec, lease, -4)  # SETTLE unknown too: loaded the same way
        assert await store.client.call("ZCARD", "modelyard:{t}:leases") == 0
        assert (await store.usage("t")).tokens_day == 6
        assert store.up
    finally:
        await store.close()
        server.kill()


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for ``localhost`` (key.pem beside it)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return tmp_path / "cert.pem"


async def test_rediss_with_the_store_certificate(tmp_path: Path, certificate: Path) -> None:
    port = free_port()
    binary = shutil.which("redis-server")
    assert binary is not None
    proc = popen_dying_with_parent(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--tls-cert-file", str(certificate), "--tls-key-file", str(tmp_path / "key.pem"),
         "--tls-auth-clients", "no", "--requirepass", "tls-pass", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _accepts(port), 10, "redis-server with TLS")
        client = RespClient(f"rediss://:tls-pass@localhost:{port}/1?ssl_ca_certs={certificate}")
        assert await client.call("SET", "secure", "yes") == "OK"
        assert await client.call("GET", "secure") == b"yes"
        await client.aclose()
        with pytest.raises(StoreError):  # not signed by the system's CAs
            await RespClient(f"rediss://:tls-pass@localhost:{port}/1").call("PING")
        plain = RespClient(f"redis://:tls-pass@localhost:{port}/1", timeout_s=0.5)
        with pytest.raises(StoreError):
            await plain.call("PING")
        await plain.aclose()
    finally:
        proc.kill()
        proc.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
