"""Paged KV: capacity is the sum of the rows' real lengths, and a full cache preempts instead of failing."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.server.engine import PromptTooLongError
from tests.unit.server.engine.helpers import prompt_of, request, run, tokens

pytestmark = pytest.mark.model


async def test_a_long_row_and_short_rows_share_the_cache_by_real_length(make_engine) -> None:
    # 12 blocks of 16 tokens. The long row holds 100-120 tokens (8 blocks); each short one 5-25 (2).
    # The old slab gave every row the longest row's length: it could hold one row at a time here.
    engine = await make_engine(kv_budget_tokens=192)
    long_prompt = prompt_of(100, 9)
    shorts = [prompt_of(5, i) for i in range(4)]
    alone = [tokens(await run(engine, p, max_tokens=20, ignore_eos=True)) for p in [long_prompt, *shorts]]
    seen: list[int] = []

    async def one(i: int, prompt: list[int]) -> list[int]:
        await asyncio.sleep(0.01 * i)
        out: list[int] = []
        async for o in engine.generate(request(prompt, max_tokens=20, ignore_eos=True)):
            seen.append(engine.stats().num_running)
            out.extend(o.token_ids)
        return out

    together = await asyncio.gather(*(one(i, p) for i, p in enumerate([long_prompt, *shorts])))
    assert together == alone
    assert max(seen) >= 3
    assert engine.stats().kv_blocks_total == 12


async def test_a_full_cache_preempts_and_every_request_still_gets_its_tokens(make_engine) -> None:
    # 4 blocks = 64 tokens; three requests that grow to 50 tokens each cannot all stay resident.
    engine = await make_engine(kv_budget_tokens=64, enable_prefix_caching=False)
    prompts = [prompt_of(10, i) for i in range(3)]
    alone = [tokens(await run(engine, p, max_tokens=40, ignore_eos=True)) for p in prompts]
    assert engine.stats().num_preemptions == 0
    together = await asyncio.gather(*(run(engine, p, max_tokens=40, ignore_eos=True) for p in prompts))
    assert [tokens(outs) for outs in together] == alone
    assert all(outs[-1].finish_reason == "length" for outs in together)
    assert engine.stats().num_preemptions > 0
    assert engine.stats().kv_cache_usage == 0.0


async def test_preemption_keeps_seeded_sampling_and_penalties(make_engine) -> None:
    engine = await make_engine(kv_budget_tokens=64)
    params = {"max_tokens": 40, "ignore_eos": True, "temperature": 1.0, "seed": 7, "frequency_penalty": 0.5}
    prompts = [prompt_of(10, i) for i in range(3)]
    alone = [tokens(await run(engine, p, **params)) for p in prompts]
    together = await asyncio.gather(*(run(engine, p, **params) for p in prompts))
    assert [tokens(outs) for outs in together] == alone
    assert engine.stats().num_preemptions > 0


async def test_a_request_larger_than_the_whole_cache_is_refused(make_engine) -> None:
    engine = await make_engine(kv_budget_tokens=64)
    with pytest.raises(PromptTooLongError, match="KV cache"):
        await run(engine, prompt_of(40), max_tokens=30)


def test_a_long_row_decodes_apart_from_many_short_ones() -> None:
    from types import SimpleNamespace

    from modelyard.server.engine.step_executor import decode_groups

    rows: list = [SimpleNamespace(num_computed=n) for n in [20, 1000, 25, 30, 990]]
    groups = decode_groups(rows, split_tokens=100)
    assert [[r.num_computed for r in g] for g in groups] == [[1000, 990], [30, 25, 20]]
    assert len(decode_groups(rows, split_tokens=10_000)) == 1
