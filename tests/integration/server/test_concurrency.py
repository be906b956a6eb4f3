"""Concurrency is proven through the server's own metrics: one batch, freed slots, bounded queue."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from tests.fixtures.models import LLAMA_NAME, TEST_API_KEY, ServerProcess
from tests.fixtures.openai_spec import assert_matches
from tests.integration.server.helpers import auth, metric
from tests.support.waits import wait_until

pytestmark = pytest.mark.model

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


async def test_sixteen_streams_run_in_one_batch(llama_server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=llama_server.v1, api_key="unused", max_retries=0)
    first_chunk_seen = [asyncio.Event() for _ in range(16)]
    release = asyncio.Event()

    chunks: list[dict[str, Any]] = []

    async def one(i: int) -> tuple[str, int]:
        stream = await client.chat.completions.create(
            model=LLAMA_NAME,
            messages=[{"role": "user", "content": f"Stream number {i}"}],
            max_tokens=400,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        text, usage = "", 0
        async for chunk in stream:
            chunks.append(chunk.model_dump(mode="json", exclude_unset=True))
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
                if not first_chunk_seen[i].is_set():
                    first_chunk_seen[i].set()
                    await release.wait()  # hold here so the scrape below sees everyone mid-stream
            if chunk.usage:
                usage = chunk.usage.completion_tokens
        return text, usage

    tasks = [asyncio.create_task(one(i)) for i in range(16)]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in first_chunk_seen)), 60)
    running = await asyncio.to_thread(metric, llama_server, RUNNING, model_name=LLAMA_NAME)
    release.set()
    results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    assert running == 16, f"expected all 16 streams in the running batch, metrics said {running}"
    assert all(usage == 400 for _, usage in results)
    assert all(text for text, _ in results)
    for chunk in chunks:  # validated afterwards: schema checks are too slow for the hot loop
        assert_matches("CreateChatCompletionStreamResponse", chunk)
    await client.close()


def test_disconnected_client_frees_its_slot(llama_server: ServerProcess) -> None:
    aborted_before = metric(llama_server, "vllm:request_success_total", finished_reason="abort")
    body = {"model": LLAMA_NAME, "prompt": "Forever", "max_tokens": 1000, "stream": True, "ignore_eos": True}
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", llama_server.v1 + "/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        lines = resp.iter_lines()
        for _ in range(3):
            next(lines)
        # leaving the block closes the connection mid-stream
    wait_until(lambda: metric(llama_server, RUNNING, model_name=LLAMA_NAME) == 0)
    wait_until(
        lambda: (
            metric(llama_server, "vllm:request_success_total", finished_reason="abort") == aborted_before + 1
        )
    )
    ok = httpx.post(
        llama_server.v1 + "/completions", json={"model": LLAMA_NAME, "prompt": "x", "max_tokens": 2}
    )
    assert ok.status_code == 200


def test_client_gone_before_a_non_streamed_answer_aborts_it(llama_server: ServerProcess) -> None:
    aborted_before = metric(llama_server, "vllm:request_success_total", finished_reason="abort")
    body = {"model": LLAMA_NAME, "prompt": "Forever", "max_tokens": 1000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(llama_server.v1 + "/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
    wait_until(
        lambda: (
            metric(llama_server, "vllm:request_success_total", finished_reason="abort") == aborted_before + 1
        )
    )
    wait_until(lambda: metric(llama_server, RUNNING, model_name=LLAMA_NAME) == 0)


async def test_full_queue_answers_429_with_retry_after(gpt2_server: ServerProcess) -> None:
    """gpt2_server runs two sequences and queues one; the next request is refused, not buffered."""
    # Long enough (8000 tokens) that the batch is still busy when the refusals are checked.
    body = {"model": "tiny-gpt2", "prompt": "Long", "max_tokens": 8000, "ignore_eos": True, "stream": True}
    async with httpx.AsyncClient(timeout=120, headers=auth(gpt2_server)) as http:

        async def long_stream() -> list[str]:
            async with http.stream("POST", gpt2_server.v1 + "/completions", json=body) as resp:
                assert resp.status_code == 200
                return [line async for line in resp.aiter_lines()]

        def gauge(name: str) -> float:
            return metric(gpt2_server, name, model_name="tiny-gpt2")

        streams = []
        # One at a time: the engine admits waiting requests at its next step, and a second request
        # arriving in the same instant would itself find the one-slot queue full.
        for running, waiting in [(1, 0), (2, 0), (2, 1)]:
            streams.append(asyncio.create_task(long_stream()))
            await asyncio.to_thread(
                wait_until, lambda r=running, w=waiting: (gauge(RUNNING), gauge(WAITING)) == (r, w)
            )
        refused = await http.post(gpt2_server.v1 + "/completions", json={**body, "stream": False})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert_matches("ErrorResponse", refused.json())
        sdk = openai.AsyncOpenAI(base_url=gpt2_server.v1, api_key=TEST_API_KEY, max_retries=0)
        with pytest.raises(openai.RateLimitError):
            await sdk.completions.create(model="tiny-gpt2", prompt="x", max_tokens=2)
        # The queued client gives up: its place in the queue is released without waiting for a slot.
        aborted = metric(gpt2_server, "vllm:request_success_total", finished_reason="abort")
        streams[2].cancel()
        await asyncio.to_thread(
            wait_until,
            lambda: metric(gpt2_server, "vllm:request_success_total", finished_reason="abort") == aborted + 1,
        )
        await asyncio.to_thread(
            wait_until, lambda: gauge(WAITING) == 0
        )  # the engine drops it at its next step
        for stream in streams[:2]:
            stream.cancel()
        await asyncio.to_thread(wait_until, lambda: gauge(RUNNING) == 0)
        served = await sdk.completions.create(model="tiny-gpt2", prompt="x", max_tokens=2)
        assert served.choices
        await sdk.close()
