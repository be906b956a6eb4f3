"""Engine events (queued, scheduled, preempted) ride on a request's outputs across the process
boundary, and the engine counts its steps by tokens processed (vLLM's ``iteration_tokens_total``)."""

from __future__ import annotations

import asyncio

import pytest

from modelyard.server.engine.blocks import BlockManager
from modelyard.server.engine.scheduler import Scheduler
from modelyard.server.engine.step_tokens import StepTokens
from tests.unit.server.engine.helpers import prompt_of, run
from tests.unit.server.engine.test_blocks import _seq


def test_the_scheduler_stamps_queued_scheduled_and_preempted_in_order() -> None:
    blocks = BlockManager(num_blocks=2, block_size=4)
    scheduler = Scheduler(blocks, max_num_seqs=4, max_prefill_tokens=64)
    old, new = _seq(1, [1, 2, 3]), _seq(2, [4, 5, 6])
    scheduler.add(old)
    scheduler.add(new)
    scheduler.schedule()
    for seq in (old, new):
        scheduler.computed(seq, 3)
        seq.tokens.append(9)
    old.tokens.append(9)
    scheduler.computed(old, 1)
    scheduler.schedule()  # the newest is preempted
    assert [e.kind for e in old.events] == ["queued", "scheduled"]
    assert [e.kind for e in new.events] == ["queued", "scheduled", "preempted"]
    stamps = [e.timestamp for e in new.events]
    assert stamps == sorted(stamps)


def test_step_tokens_are_counted_in_power_of_two_classes() -> None:
    steps = StepTokens()
    for tokens in (0, 1, 2, 3, 4, 5, 1024):
        steps.record(tokens)
    assert steps.counts() == (1, 1, 2, 1) + (0,) * 6 + (1,)
    assert steps.total == 1039


@pytest.mark.model
async def test_events_arrive_with_the_first_output_and_after_a_preemption(make_engine) -> None:
    engine = await make_engine(kv_budget_tokens=64, enable_prefix_caching=False)
    alone = await run(engine, prompt_of(10, 0), max_tokens=4, ignore_eos=True)
    assert [e.kind for e in alone[0].events] == ["queued", "scheduled"]
    assert all(not o.events for o in alone[1:])
    stats = engine.stats()
    # One prefill step (10 prompt tokens + 1 sampled) and three one-token decode steps.
    assert stats.step_tokens_sum == 11 + 3
    assert sum(stats.step_tokens_log2) == 4
    assert stats.block_size == 16

    together = await asyncio.gather(
        *(run(engine, prompt_of(10, i), max_tokens=40, ignore_eos=True) for i in range(3))
    )
    kinds = [[e.kind for o in outs for e in o.events] for outs in together]
    assert engine.stats().num_preemptions > 0
    preempted = [k for k in kinds if "preempted" in k]
    assert preempted
    for k in preempted:  # queued once; scheduled again after each preemption
        assert k[:2] == ["queued", "scheduled"]
        assert k.count("scheduled") == k.count("preempted") + 1
