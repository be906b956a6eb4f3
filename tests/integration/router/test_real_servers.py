"""The router in front of real model-server processes (tiny models), driven by the official SDK."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest

from tests.fixtures.models import ServerProcess, start_server
from tests.integration.router.procs import Proc, start_router, write_config
from tests.support.net import http_get

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]

CHAT_MODEL, CHAT_ALIAS, EMBED_MODEL = "tiny-llama", "tiny", "minilm"
KEYS = """
keys:
  - {name: ops, key: sk-ops-0000001, requestsPerMinute: 2}
  - {name: embed-only, key: sk-embed-00001, models: [minilm]}
"""


@pytest.fixture(scope="module")
def servers(
    tiny_llama_path: Path, minilm_path: Path, server_logs_dir: Path
) -> Iterator[dict[str, ServerProcess]]:
    chat = start_server(
        ["--model", str(tiny_llama_path), "--served-model-name", CHAT_MODEL, "--alias", CHAT_ALIAS],
        log_dir=server_logs_dir,
    )
    try:
        embed = start_server(
            ["--model", str(minilm_path), "--served-model-name", EMBED_MODEL, "--task", "embed"],
            log_dir=server_logs_dir,
        )
    except BaseException:
        chat.stop()
        raise
    try:
        yield {CHAT_MODEL: chat, EMBED_MODEL: embed}
    finally:
        chat.stop()
        embed.stop()


def _router(
    tmp: Path, servers: dict[str, ServerProcess], keys: str | None = None, **settings: object
) -> Proc:
    config = write_config(
        tmp / "models.json",
        {
            CHAT_MODEL: {"urls": [servers[CHAT_MODEL].base_url], "aliases": [CHAT_ALIAS]},
            EMBED_MODEL: [servers[EMBED_MODEL].base_url],
        },
    )
    keys_file = None
    if keys is not None:
        keys_file = tmp / "keys.yaml"
        keys_file.write_text(keys)
    return start_router(tmp, config, keys_file, **settings)


@pytest.fixture(scope="module")
def router(servers: dict[str, ServerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = _router(tmp_path_factory.mktemp("router"), servers, max_body_bytes=65536)
    try:
        yield proc
    finally:
        proc.kill()


def sdk(base: str, key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0)


MESSAGES = [{"role": "user", "content": "Tell me about routers."}]


async def test_chat_completion_and_embedding_match_the_direct_answers(
    router: Proc, servers: dict[str, ServerProcess]
) -> None:
    direct, routed = sdk(servers[CHAT_MODEL].base_url), sdk(router.url)
    kwargs = {"model": CHAT_MODEL, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    d = await direct.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    r = await routed.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    assert r.choices[0].message.content == d.choices[0].message.content
    assert r.usage is not None
    assert d.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (
        d.usage.prompt_tokens,
        d.usage.completion_tokens,
    )
    # The same pod answered both: the routed request found the direct one's prompt in the prefix cache,
    # and the router passed the usage details through.
    assert r.usage.prompt_tokens_details is not None
    assert r.usage.prompt_tokens_details.cached_tokens
    via_alias = await routed.chat.completions.create(**kwargs | {"model": CHAT_ALIAS})  # type: ignore[call-overload]
    assert via_alias.choices[0].message.content == d.choices[0].message.content

    ckw = {"model": CHAT_MODEL, "prompt": "Once upon a time", "max_tokens": 10, "temperature": 0}
    dc = await direct.completions.create(**ckw)  # type: ignore[call-overload]
    rc = await routed.completions.create(**ckw)  # type: ignore[call-overload]
    assert rc.choices[0].text == dc.choices[0].text

    de = await sdk(servers[EMBED_MODEL].base_url).embeddings.create(
        model=EMBED_MODEL, input=["a router", "b"]
    )
    re_ = await routed.embeddings.create(model=EMBED_MODEL, input=["a router", "b"])
    assert [e.embedding for e in re_.data] == [e.embedding for e in de.data]
    assert re_.usage.prompt_tokens == de.usage.prompt_tokens


def _normalise(sse: bytes) -> bytes:
    """Blank out the per-response `id` and `created` (they differ between any two responses)."""
    sse = re.sub(rb'"id":\s*"[^"]*"', b'"id":"X"', sse)
    return re.sub(rb'"created":\s*\d+', b'"created":0', sse)


async def test_stream_through_the_router_is_byte_for_byte_the_direct_stream(
    router: Proc, servers: dict[str, ServerProcess]
) -> None:
    body = {
        "model": CHAT_MODEL,
        "messages": MESSAGES,
        "max_tokens": 16,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with aiohttp.ClientSession() as s:
        async with s.post(servers[CHAT_MODEL].v1 + "/chat/completions", json=body) as d:
            direct = await d.read()
        async with s.post(router.url + "/v1/chat/completions", json=body) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            routed = await r.read()
    assert direct.endswith(b"data: [DONE]\n\n")
    assert _normalise(routed) == _normalise(direct)
    usage = json.loads(routed.split(b"data: ")[-2])["usage"]
    metrics = http_get(router.metrics_url)[1].decode()
    assert f'modelyard_router_completion_tokens_total{{key="",model="{CHAT_MODEL}"}}' in metrics
    assert usage["completion_tokens"] > 0


async def test_sdk_stream_models_list_and_errors(router: Proc) -> None:
    client = sdk(router.url)
    stream = await client.chat.completions.create(
        model=CHAT_ALIAS, messages=MESSAGES, max_tokens=8, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8

    assert sorted(m.id for m in (await client.models.list()).data) == sorted(
        [CHAT_MODEL, CHAT_ALIAS, EMBED_MODEL]
    )
    with pytest.raises(openai.NotFoundError) as nf:
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert nf.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as too_big:
        await client.embeddings.create(model=EMBED_MODEL, input="x" * 70_000)
    assert too_big.value.status_code == 413
    # The backend's own 4xx (invalid request) comes through untouched.
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model=CHAT_MODEL, messages=[])


async def test_api_keys_in_front_of_a_real_server(servers: dict[str, ServerProcess], tmp_path: Path) -> None:
    router = _router(tmp_path, servers, keys=KEYS)
    try:
        with pytest.raises(openai.AuthenticationError):
            await sdk(router.url, "sk-nope-0000").chat.completions.create(model=CHAT_MODEL, messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):  # not its model: the same 404 as a missing one
            await sdk(router.url, "sk-embed-00001").chat.completions.create(
                model=CHAT_MODEL, messages=MESSAGES
            )
        emb = await sdk(router.url, "sk-embed-00001").embeddings.create(model=EMBED_MODEL, input="ok")
        assert len(emb.data[0].embedding) == 384
        ops = sdk(router.url, "sk-ops-0000001")
        for _ in range(2):
            await ops.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as limited:
            await ops.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=2)
        assert int(limited.value.response.headers["retry-after"]) >= 1
    finally:
        router.kill()
