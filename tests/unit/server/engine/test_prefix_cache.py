"""Automatic prefix caching: shared prompt prefixes are computed once and give the same tokens as without."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from modelyard.server.engine import GenerationOutput
from modelyard.server.engine.engine import TorchEngine
from tests.unit.server.engine.helpers import prompt_of, run, tokens

pytestmark = pytest.mark.model

SYSTEM = prompt_of(40, 5)  # two full 16-token blocks and a partial one
QUESTIONS = [prompt_of(n, 20 + n) for n in (3, 7, 12)]


def _same(a: list[GenerationOutput], b: list[GenerationOutput]) -> None:
    assert tokens(a) == tokens(b)
    assert [o.finish_reason for o in a] == [o.finish_reason for o in b]
    for x, y in zip(a, b, strict=True):
        if x.logprobs is None:
            assert y.logprobs is None
            continue
        assert y.logprobs is not None
        for lx, ly in zip(x.logprobs, y.logprobs, strict=True):
            assert lx.token_id == ly.token_id
            assert lx.logprob == pytest.approx(ly.logprob, abs=1e-4)
            assert [t for t, _ in lx.top] == [t for t, _ in ly.top]


async def _workload(engine: TorchEngine, **params: Any) -> list[list[GenerationOutput]]:
    """A first request warms the cache, then n=3 copies and other suffixes run concurrently."""
    first = await run(engine, SYSTEM + QUESTIONS[0], **params)
    concurrent = [SYSTEM + QUESTIONS[0]] * 3 + [SYSTEM + q for q in QUESTIONS[1:]]
    rest = await asyncio.gather(*(run(engine, p, **params) for p in concurrent))
    return [first, *rest]


async def test_cached_and_uncached_runs_give_identical_tokens_and_logprobs(make_engine) -> None:
    params = {"max_tokens": 12, "ignore_eos": True, "logprobs": 2}
    cached = await _workload(await make_engine(), **params)
    uncached = await _workload(await make_engine(enable_prefix_caching=False), **params)
    for a, b in zip(cached, uncached, strict=True):
        _same(a, b)


async def test_cached_and_uncached_runs_stop_alike(make_engine) -> None:
    uncached_engine = await make_engine(enable_prefix_caching=False)
    # A stop token the model emits mid-way through the first answer (as a stop string would end it).
    free = tokens(await run(uncached_engine, SYSTEM + QUESTIONS[0], max_tokens=12, ignore_eos=True))
    stop = free[4]
    params = {"max_tokens": 12, "ignore_eos": True, "stop_token_ids": frozenset({stop})}
    cached = await _workload(await make_engine(), **params)
    uncached = await _workload(uncached_engine, **params)
    for a, b in zip(cached, uncached, strict=True):
        _same(a, b)
    assert cached[1][-1].finish_reason == "stop"
    assert 0 < len(tokens(cached[1])) < 12


async def test_the_second_request_reuses_the_shared_prefix_and_reports_it(make_engine) -> None:
    engine = await make_engine()
    first = await run(engine, SYSTEM + QUESTIONS[0], max_tokens=2)
    assert first[-1].num_cached_tokens == 0
    before = engine.stats()
    second = await run(engine, SYSTEM + QUESTIONS[1], max_tokens=2)
    assert second[-1].num_cached_tokens == 32  # the two full blocks of the shared system prompt
    after = engine.stats()
    assert after.prefix_cache_queries - before.prefix_cache_queries == len(SYSTEM + QUESTIONS[1])
    assert after.prefix_cache_hits - before.prefix_cache_hits == 32


async def test_an_identical_prompt_recomputes_its_last_block_for_logits(make_engine) -> None:
    engine = await make_engine()
    prompt = prompt_of(32, 3)  # exactly two blocks
    a = await run(engine, prompt, max_tokens=5, ignore_eos=True)
    b = await run(engine, prompt, max_tokens=5, ignore_eos=True)
    assert tokens(a) == tokens(b)
    assert b[-1].num_cached_tokens == 16


async def test_prompt_logprobs_requests_compute_the_whole_prompt(make_engine) -> None:
    engine = await make_engine()
    await run(engine, SYSTEM + QUESTIONS[0], max_tokens=2)
    out = await run(engine, SYSTEM + QUESTIONS[0], max_tokens=2, prompt_logprobs=1)
    assert out[-1].num_cached_tokens == 0
    assert out[0].prompt_logprobs is not None
    assert len(out[0].prompt_logprobs) == len(SYSTEM + QUESTIONS[0])


async def test_switched_off_nothing_is_reused_or_counted(make_engine) -> None:
    engine = await make_engine(enable_prefix_caching=False)
    await run(engine, SYSTEM + QUESTIONS[0], max_tokens=2)
    second = await run(engine, SYSTEM + QUESTIONS[0], max_tokens=2)
    assert second[-1].num_cached_tokens == 0
    assert (engine.stats().prefix_cache_queries, engine.stats().prefix_cache_hits) == (0, 0)
