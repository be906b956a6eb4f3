"""Faults between the router and its upstreams: dead pods, cut streams, no capacity, restarts, disconnects."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import openai
import pytest

from tests.integration.router.conftest import Stack
from tests.support.net import http_get
from tests.support.waits import eventually

pytestmark = pytest.mark.timeout(180)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def stats(url: str) -> dict[str, object]:
    return json.loads(http_get(url + "/stats")[1])


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, object]) -> tuple[int, str, bytes]:
    async with session.post(url + "/v1/chat/completions", json=body) as r:
        return r.status, r.headers.get("x-backend", ""), await r.read()


async def test_killing_a_replica_mid_load_only_fails_requests_it_held(stack: Stack) -> None:
    slow_stream = ("--chunks", "40", "--chunk-delay-s", "0.05")  # 2 s per stream
    a = stack.backend("a", *slow_stream)
    b = stack.backend("b", *slow_stream)
    router = stack.router({"m": [a.url, b.url]})
    # Room for all 100 requests at once (aiohttp's default pool is exactly 100), and a bound per request:
    # a request the router never answers fails here, by name, instead of hanging the test.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200), timeout=aiohttp.ClientTimeout(total=60)
    ) as s:
        first = [asyncio.ensure_future(post(s, router.url, CHAT | {"stream": True})) for _ in range(50)]
        await eventually(
            lambda: stats(a.url)["in_flight"] == 25 and stats(b.url)["in_flight"] == 25,
            10,
            "50 streams in flight",
        )
        a.kill()
        later = await asyncio.gather(*(post(s, router.url, CHAT) for _ in range(50)))
        started = await asyncio.gather(*first)
    # Requests that had not started when `a` died all succeed, on `b`.
    assert [status for status, _, _ in later] == [200] * 50
    assert {backend for _, backend, _ in later} == {"b"}
    # Streams already running on `b` finish; those on `a` end with an error event and [DONE], not a hang.
    assert [status for status, _, _ in started] == [200] * 50
    complete = [body for _, backend, body in started if backend == "b"]
    cut = [body for _, backend, body in started if backend == "a"]
    assert len(complete) == len(cut) == 25
    assert all(b"error" not in body and body.endswith(b"data: [DONE]\n\n") for body in complete)
    assert all(
        b'"code":"upstream_disconnected"' in body and body.endswith(b"data: [DONE]\n\n") for body in cut
    )


async def test_a_cut_stream_ends_with_an_error_event_and_done(stack: Stack) -> None:
    a = stack.backend("a", "--cut-after", "3")
    router = stack.router({"m": [a.url]})
    async with (
        aiohttp.ClientSession() as s,
        s.post(router.url + "/v1/chat/completions", json=CHAT | {"stream": True}) as r,
    ):
        assert r.status == 200
        raw = await r.read()
    events = [e for e in raw.decode().split("\n\n") if e]
    assert len(events) == 1 + 3 + 2  # role chunk, 3 content chunks, error, [DONE]
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "upstream_disconnected"
    assert events[-1] == "data: [DONE]"

    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    stream = await client.chat.completions.create(**CHAT, stream=True)  # type: ignore[call-overload]
    with pytest.raises(openai.APIError, match="cut before it finished"):
        async for _ in stream:
            pass


async def test_all_replicas_down_is_503_within_the_hold_bound_never_a_hang(stack: Stack) -> None:
    a = stack.backend("a")
    b = stack.backend("b")
    router = stack.router({"m": [a.url, b.url]}, hold_max_wait_s=1.5, hold_heartbeat_s=0.3)
    a.kill()
    b.kill()
    async with aiohttp.ClientSession() as s:
        for _ in range(4):  # the first requests find both refused; later ones are held while both are ejected
            t0 = time.monotonic()
            async with s.post(router.url + "/v1/chat/completions", json=CHAT) as r:
                assert r.status == 503
                assert (await r.json())["error"]["type"] == "service_unavailable"
                assert int(r.headers["Retry-After"]) >= 1
            assert time.monotonic() - t0 < 1.5 + 1.0
        # A held stream commits to 200, sends keepalive comments, then ends with an error event and [DONE].
        async with s.post(router.url + "/v1/chat/completions", json=CHAT | {"stream": True}) as r:
            assert r.status == 200
            raw = (await r.read()).decode()
    assert raw.startswith(": keepalive\n\n")
    assert '"code":"model_unavailable"' in raw
    assert raw.endswith("data: [DONE]\n\n")
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_endpoints{model="m",state="ejected"} 2.0' in metrics


async def test_a_restarted_replica_is_readmitted(stack: Stack) -> None:
    a = stack.backend("a")
    b = stack.backend("b")
    router = stack.router({"m": [a.url, b.url]}, eject_after_failures=1, probe_interval_s=0.1)
    a.kill()
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, router.url, CHAT) for _ in range(10)))
        assert {(st, be) for st, be, _ in results} == {(200, "b")}
        metrics = http_get(router.metrics_url)[1].decode()
        assert 'modelyard_router_endpoints{model="m",state="ejected"} 1.0' in metrics
        assert 'modelyard_router_upstream_retries_total{model="m"}' in metrics
        a.start("/health")  # same port

        async def served_by_a() -> bool:
            burst = await asyncio.gather(*(post(s, router.url, CHAT) for _ in range(4)))
            return any(be == "a" for _, be, _ in burst)

        deadline = time.monotonic() + 10
        while not await served_by_a():
            assert time.monotonic() < deadline, "restarted replica never received traffic again"
            await asyncio.sleep(0.05)


async def test_5xx_before_the_first_byte_is_retried_on_another_replica(stack: Stack) -> None:
    a = stack.backend("a", "--fail-status", "503")
    b = stack.backend("b")
    router = stack.router({"m": [a.url, b.url]})
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(post(s, router.url, CHAT) for _ in range(20)))
    assert {(st, be) for st, be, _ in results} == {(200, "b")}
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_upstream_errors_total{model="m",reason="status_5xx"}' in metrics
    assert 'modelyard_router_upstream_retries_total{model="m"} 0.0' not in metrics


async def test_the_backends_own_error_is_relayed_when_every_replica_fails(stack: Stack) -> None:
    a = stack.backend("a", "--fail-status", "500")
    router = stack.router({"m": [a.url]})
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert err.value.body == {"message": "fake failure", "type": "server_error", "param": None, "code": None}


async def test_a_held_request_completes_when_a_replica_appears(stack: Stack) -> None:
    a = stack.backend("a")
    router = stack.router({"m": []}, hold_max_wait_s=20)
    async with aiohttp.ClientSession() as s:
        pending = asyncio.ensure_future(post(s, router.url, CHAT))
        await eventually(
            lambda: (
                'modelyard_router_requests_held{model="m"} 1.0' in http_get(router.metrics_url)[1].decode()
            ),
            10,
            "request held",
        )
        stack.models({"m": [a.url]})  # scale-up lands: the static file is re-read
        status, backend, _ = await asyncio.wait_for(pending, 15)
    assert (status, backend) == (200, "a")


async def test_the_autoscaler_load_counts_held_requests_on_the_metrics_port_only(stack: Stack) -> None:
    router = stack.router({"m": []}, hold_max_wait_s=20)

    def load() -> dict[str, object]:
        status, body = http_get(router.metrics_base + "/autoscaler/load")
        assert status == 200, body
        (entry,) = json.loads(body)["models"]
        return dict(entry)

    assert load() | {"source": None} == {"name": "m", "source": None, "inFlight": 0, "held": 0, "started": 0}
    async with aiohttp.ClientSession() as s:
        pending = asyncio.ensure_future(post(s, router.url, CHAT))
        # A held request is in flight too: the autoscaler reads both.
        await eventually(lambda: load()["held"] == 1, 10, "request held")
        assert load()["inFlight"] == 1
        assert load()["started"] == 1  # what lets the autoscaler see requests shorter than its poll
        # An internal signal, not client API: the API port does not serve it.
        status, body = http_get(router.url + "/autoscaler/load")
        assert status == 404
        assert json.loads(body)["error"]["code"] == "not_found"
        pending.cancel()


async def test_held_requests_beyond_the_per_model_bound_get_503_at_once(stack: Stack) -> None:
    router = stack.router({"m": []}, hold_max_wait_s=20, hold_max_per_model=2)
    async with aiohttp.ClientSession() as s:
        held = [asyncio.ensure_future(post(s, router.url, CHAT)) for _ in range(2)]
        await eventually(
            lambda: (
                'modelyard_router_requests_held{model="m"} 2.0' in http_get(router.metrics_url)[1].decode()
            ),
            10,
            "two held",
        )
        t0 = time.monotonic()
        status, _, body = await post(s, router.url, CHAT)
        assert status == 503
        assert time.monotonic() - t0 < 2
        assert json.loads(body)["error"]["code"] == "model_unavailable"
        for task in held:
            task.cancel()


async def test_client_disconnect_propagates_upstream(stack: Stack) -> None:
    a = stack.backend("a", "--chunks", "400", "--chunk-delay-s", "0.05")  # a 20 s stream
    router = stack.router({"m": [a.url]})
    async with aiohttp.ClientSession() as s:
        r = await s.post(router.url + "/v1/chat/completions", json=CHAT | {"stream": True})
        await r.content.readany()
        await eventually(lambda: stats(a.url)["in_flight"] == 1, 5, "stream running")
        r.close()  # the client goes away
    await eventually(lambda: stats(a.url)["in_flight"] == 0, 5, "upstream stream aborted")
    await eventually(
        lambda: (
            'modelyard_router_requests_in_flight{model="m"} 0.0' in http_get(router.metrics_url)[1].decode()
        ),
        5,
        "router released the request",
    )
    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_requests_total{code="499",key="",model="m"} 1.0' in metrics


async def test_a_client_hanging_up_after_done_is_a_success_not_a_499(stack: Stack) -> None:
    # The SDK stops reading at [DONE]; the backend may still be closing its side.
    a = stack.backend("a", "--linger-after-done-s", "2")
    router = stack.router({"m": [a.url]})
    async with aiohttp.ClientSession() as s:
        r = await s.post(router.url + "/v1/chat/completions", json=CHAT | {"stream": True})
        body = b""
        while b"data: [DONE]" not in body:
            body += await r.content.readany()
        r.close()
    await eventually(
        lambda: (
            'modelyard_router_requests_total{code="200",key="",model="m"} 1.0'
            in http_get(router.metrics_url)[1].decode()
        ),
        10,
        "the stream counted as a success",
    )
    assert 'code="499"' not in http_get(router.metrics_url)[1].decode()


async def test_sigterm_drains_streams_in_flight(stack: Stack) -> None:
    a = stack.backend("a", "--chunks", "20", "--chunk-delay-s", "0.05")  # ~1 s stream
    router = stack.router({"m": [a.url]})
    async with (
        aiohttp.ClientSession() as s,
        s.post(router.url + "/v1/chat/completions", json=CHAT | {"stream": True}) as r,
    ):
        await r.content.readany()
        exiting = asyncio.get_running_loop().run_in_executor(None, router.terminate)
        raw = await r.read()
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b"error" not in raw
    assert await exiting == 0
