"""Continuous batching: requests join and leave at token boundaries without changing their tokens."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.server.engine import GenerationOutput, PromptTooLongError, QueueFullError
from tests.unit.server.engine.helpers import prompt_of, request, run, tokens, wait_until

pytestmark = pytest.mark.model

LENGTHS = [3, 17, 40, 9, 1, 25]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
async def test_greedy_in_a_batch_equals_greedy_alone(make_engine, kind: str) -> None:
    engine = await make_engine(kind)
    prompts = [prompt_of(n, i) for i, n in enumerate(LENGTHS)]
    alone = [tokens(await run(engine, p, max_tokens=12, ignore_eos=True)) for p in prompts]

    async def staggered(i: int, prompt: list[int]) -> list[int]:
        await asyncio.sleep(0.02 * i)  # join the running batch at different token boundaries
        return tokens(await run(engine, prompt, max_tokens=12 - (i % 3), ignore_eos=True))

    together = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(prompts)))
    assert together == [a[: 12 - (i % 3)] for i, a in enumerate(alone)]


async def test_requests_share_one_running_batch(make_engine) -> None:
    engine = await make_engine()
    seen: list[int] = []

    async def one(i: int) -> None:
        async for _ in engine.generate(request(prompt_of(8, i), max_tokens=30, ignore_eos=True)):
            seen.append(engine.stats().num_running)

    await asyncio.gather(*(one(i) for i in range(6)))
    assert max(seen) == 6
    assert engine.stats().num_running == 0
    assert engine.stats().kv_cache_usage == 0.0


async def test_max_tokens_ends_with_length(make_engine) -> None:
    outputs = await run(await make_engine(), prompt_of(5), max_tokens=7, ignore_eos=True)
    assert len(tokens(outputs)) == 7
    assert [o.finish_reason for o in outputs] == [None] * 6 + ["length"]
    assert outputs[-1].num_generated_tokens == 7
    assert outputs[-1].num_prompt_tokens == 5


async def test_eos_stops_unless_ignored_and_not_before_min_tokens(make_engine) -> None:
    engine = await make_engine()
    force_eos = {2: 100.0}  # the tiny models' EOS id
    stopped = await run(engine, prompt_of(5), max_tokens=10, logit_bias=force_eos)
    assert stopped[-1].finish_reason == "stop"
    assert stopped[-1].stop_token_id == 2
    assert tokens(stopped) == []

    held = await run(engine, prompt_of(5), max_tokens=10, logit_bias=force_eos, min_tokens=3)
    assert len(tokens(held)) == 3
    assert 2 not in tokens(held)
    assert held[-1].finish_reason == "stop"

    ignored = await run(engine, prompt_of(5), max_tokens=10, logit_bias=force_eos, ignore_eos=True)
    assert tokens(ignored) == [2] * 10
    assert ignored[-1].finish_reason == "length"


async def test_stop_token_ids_end_generation_even_with_ignore_eos(make_engine) -> None:
    outputs = await run(
        await make_engine(),
        prompt_of(5),
        max_tokens=10,
        ignore_eos=True,
        logit_bias={77: 100.0},
        stop_token_ids=frozenset({77}),
    )
    assert outputs[-1].finish_reason == "stop"
    assert outputs[-1].stop_token_id == 77


async def test_closing_the_stream_frees_the_slot(make_engine) -> None:
    engine = await make_engine()
    stream = engine.generate(request(prompt_of(6), max_tokens=200, ignore_eos=True))
    await stream.__anext__()
    assert engine.stats().num_running == 1
    assert engine.stats().kv_cache_usage > 0
    await stream.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: engine.stats().num_running == 0)
    assert engine.stats().kv_cache_usage == 0.0


async def test_cancelled_consumer_frees_the_slot(make_engine) -> None:
    engine = await make_engine()
    got_one = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(request(prompt_of(6), max_tokens=200, ignore_eos=True)):
            got_one.set()

    task = asyncio.create_task(consume())
    await got_one.wait()
    task.cancel()
    await wait_until(lambda: engine.stats().num_running == 0)
    # The freed slot serves the next request.
    assert len(tokens(await run(engine, prompt_of(4), max_tokens=3, ignore_eos=True))) == 3


async def test_full_waiting_queue_raises_queue_full_before_any_output(make_engine) -> None:
    engine = await make_engine(max_num_seqs=1, max_queue=1)
    running = engine.generate(request(prompt_of(4), max_tokens=200, ignore_eos=True))
    await running.__anext__()
    waiting = engine.generate(request(prompt_of(4), max_tokens=2, ignore_eos=True))
    waiting_task = asyncio.create_task(waiting.__anext__())
    await wait_until(lambda: engine.stats().num_waiting == 1)
    with pytest.raises(QueueFullError):
        await engine.generate(request(prompt_of(4), max_tokens=2)).__anext__()
    await running.aclose()  # type: ignore[attr-defined]
    first: GenerationOutput = await waiting_task  # the slot passes to the waiting request
    assert len(first.token_ids) == 1
    await waiting.aclose()  # type: ignore[attr-defined]


async def test_a_zero_queue_serves_while_slots_are_free_and_refuses_when_full(make_engine) -> None:
    engine = await make_engine(max_num_seqs=2, max_queue=0)
    first = engine.generate(request(prompt_of(4), max_tokens=200, ignore_eos=True))
    second = engine.generate(request(prompt_of(5), max_tokens=200, ignore_eos=True))
    await first.__anext__()
    await second.__anext__()
    with pytest.raises(QueueFullError):
        await engine.generate(request(prompt_of(4), max_tokens=2)).__anext__()
    await first.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: engine.stats().num_running == 1)
    assert len(tokens(await run(engine, prompt_of(4), max_tokens=2, ignore_eos=True))) == 2
    await second.aclose()  # type: ignore[attr-defined]


async def test_prompt_plus_max_tokens_over_the_context_is_rejected(make_engine) -> None:
    engine = await make_engine(max_model_len=64)
    with pytest.raises(PromptTooLongError):
        await run(engine, prompt_of(60), max_tokens=8)


async def test_long_prefill_is_chunked_and_running_streams_keep_going(make_engine) -> None:
    engine = await make_engine(max_prefill_tokens=8)
    long_prompt = prompt_of(160, 3)
    reference = tokens(await run(await make_engine(), long_prompt, max_tokens=6, ignore_eos=True))
    events: list[str] = []

    async def short() -> None:
        async for _ in engine.generate(request(prompt_of(4), max_tokens=60, ignore_eos=True)):
            events.append("short")

    async def long() -> list[int]:
        await wait_until(lambda: "short" in events)
        out: list[int] = []
        async for o in engine.generate(request(long_prompt, max_tokens=6, ignore_eos=True)):
            events.append("long")
            out.extend(o.token_ids)
        return out

    _, long_tokens = await asyncio.gather(short(), long())
    assert long_tokens == reference  # chunked prefill computes the same thing as a one-shot prefill
    before_long = events.index("long")
    # 160 tokens in chunks of 8 is 20 steps; the running stream decodes once per step meanwhile.
    assert events[:before_long].count("short") >= 15
