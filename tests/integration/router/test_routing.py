"""The router in front of fake upstream processes: routing, errors, keys, metrics (official SDK as client)."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from tests.integration.router.conftest import Stack
from tests.support.net import http_get

pytestmark = pytest.mark.timeout(120)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def stats(backend_url: str) -> dict[str, object]:
    return json.loads(http_get(backend_url + "/stats")[1])


async def test_chat_stream_models_and_request_ids_end_to_end(stack: Stack) -> None:
    a = stack.backend("a")
    router = stack.router({"m": {"urls": [a.url], "aliases": ["m-latest"]}})
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)

    raw = await client.chat.completions.with_raw_response.create(
        model="m-latest",
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"x-request-id": "rid-123"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "hello from a"
    assert raw.headers["x-request-id"] == "rid-123"
    assert stats(a.url)["request_ids"] == ["rid-123"]
    # The original body went upstream byte for byte (the alias included: backends accept their aliases).
    assert json.loads(stats(a.url)["bodies"][-1])["model"] == "m-latest"  # type: ignore[index]

    stream = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(
        f"t{i} " for i in range(8)
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8

    generated = await client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    rid = generated.headers["x-request-id"]
    assert rid
    assert rid in stats(a.url)["request_ids"]

    models = await client.models.list()
    assert [m.id for m in models.data] == ["m", "m-latest"]
    assert (await client.models.retrieve("m-latest")).id == "m-latest"

    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_requests_total{code="200",key="",model="m"} 3.0' in metrics
    assert 'modelyard_router_prompt_tokens_total{key="",model="m"} 17.0' in metrics
    assert 'modelyard_router_completion_tokens_total{key="",model="m"} 14.0' in metrics
    assert 'modelyard_router_endpoints{model="m",state="ready"} 1.0' in metrics


async def test_router_errors_use_the_openai_envelope_and_never_touch_a_backend(stack: Stack) -> None:
    a = stack.backend("a")
    router = stack.router({"m": [a.url]}, max_body_bytes=4096)
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused", max_retries=0)

    with pytest.raises(openai.NotFoundError) as nf:
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.code == "model_not_found"
    assert nf.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("nope")

    async with aiohttp.ClientSession() as s:
        big = {"model": "m", "messages": [{"role": "user", "content": "x" * 10_000}]}
        async with s.post(router.url + "/v1/chat/completions", json=big) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "request_too_large"
        async with s.post(router.url + "/v1/chat/completions", data=b"{not json") as r:
            assert r.status == 400
            assert (await r.json())["error"]["type"] == "invalid_request_error"
        async with s.post(router.url + "/v1/chat/completions", json={"messages": []}) as r:
            assert r.status == 400
            assert (await r.json())["error"]["param"] == "model"
        async with s.get(router.url + "/v1/chat/completions") as r:
            assert r.status == 405
            assert "error" in await r.json()
        async with s.get(router.url + "/nowhere") as r:
            assert r.status == 404
            assert "error" in await r.json()
    assert stats(a.url)["requests"] == 0


KEYS = """
keys:
  - name: team-a
    key: sk-team-a-secret
    models: [m]
    requestsPerMinute: 3
  - name: team-b
    key: sk-team-b-secret
    models: [other]
"""


async def test_api_keys_401_404_429_and_key_names_in_metrics(stack: Stack) -> None:
    a = stack.backend("a")
    router = stack.router({"m": [a.url], "other": [a.url]}, keys=KEYS)
    base = router.url + "/v1"

    with pytest.raises(openai.AuthenticationError) as e401:
        await openai.AsyncOpenAI(base_url=base, api_key="sk-wrong", max_retries=0).chat.completions.create(
            **CHAT
        )
    assert e401.value.code == "invalid_api_key"
    team_b = openai.AsyncOpenAI(base_url=base, api_key="sk-team-b-secret", max_retries=0)
    with pytest.raises(openai.NotFoundError) as forbidden:
        await team_b.chat.completions.create(**CHAT)
    with pytest.raises(openai.NotFoundError) as missing:
        await team_b.chat.completions.create(**{**CHAT, "model": "no-such-model"})
    # A model the key may not use is indistinguishable from one that does not exist.
    assert forbidden.value.status_code == missing.value.status_code == 404
    seen = [(e.value.code, e.value.type, e.value.param) for e in (forbidden, missing)]
    assert seen[0] == seen[1] == ("model_not_found", "invalid_request_error", "model")
    assert forbidden.value.message.replace("`m`", "`no-such-model`") == missing.value.message
    with pytest.raises(openai.NotFoundError):
        await team_b.models.retrieve("m")
    assert [m.id for m in (await team_b.models.list()).data] == ["other"]

    team_a = openai.AsyncOpenAI(base_url=base, api_key="sk-team-a-secret", max_retries=0)
    assert [m.id for m in (await team_a.models.list()).data] == ["m"]  # only what the key may use
    for _ in range(3):
        await team_a.chat.completions.create(**CHAT)
    assert "authorization" not in {k.lower() for k in stats(a.url)["last_headers"]}  # type: ignore[attr-defined]
    with pytest.raises(openai.RateLimitError) as e429:
        await team_a.chat.completions.create(**CHAT)
    assert e429.value.code == "rate_limit_exceeded"
    assert int(e429.value.response.headers["retry-after"]) >= 1

    metrics = http_get(router.metrics_url)[1].decode()
    assert 'modelyard_router_requests_total{code="200",key="team-a",model="m"} 3.0' in metrics
    assert 'modelyard_router_requests_total{code="429",key="team-a",model="m"} 1.0' in metrics
    assert 'modelyard_router_requests_total{code="404",key="team-b",model="m"} 1.0' in metrics
    assert 'modelyard_router_prompt_tokens_total{key="team-a",model="m"} 15.0' in metrics


async def test_backends_get_the_routers_upstream_key_not_the_clients(stack: Stack) -> None:
    a = stack.backend("a")
    router = stack.router({"m": [a.url]}, keys=KEYS, upstream_api_key="sk-upstream-only")
    client = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="sk-team-a-secret", max_retries=0)
    await client.chat.completions.create(**CHAT)
    headers = {k.lower(): v for k, v in stats(a.url)["last_headers"].items()}  # type: ignore[attr-defined]
    assert headers["authorization"] == "Bearer sk-upstream-only"


async def test_streams_and_bodies_pass_through_byte_for_byte(stack: Stack) -> None:
    a = stack.backend("a", "--chunks", "50")
    router = stack.router({"m": [a.url]})
    body = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    headers = {"x-request-id": "same-id"}
    async with aiohttp.ClientSession() as s:
        for payload in (body, CHAT):
            async with s.post(a.url + "/v1/chat/completions", json=payload, headers=headers) as d:
                direct = await d.read()
            async with s.post(router.url + "/v1/chat/completions", json=payload, headers=headers) as r:
                routed = await r.read()
                assert r.headers["content-type"] == d.headers["content-type"]
            assert routed == direct
