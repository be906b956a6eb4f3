"""Engine events (queued, scheduled, preempted; for a traced request also prefill_done, first_token and
finished) ride on a request's outputs across the process boundary, and the engine counts its steps by
tokens processed (vLLM's ``iteration_tokens_total``)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from modelyard.server.engine.core.blocks import BlockManager
from modelyard.server.engine.core.scheduler import Scheduler
from modelyard.server.engine.core.step_tokens import StepTokens
from modelyard.server.engine.types import GenerationOutput, GenerationRequest
from tests.unit.server.engine.helpers import prompt_of, request, run
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


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _traced(prompt: list[int], **params: object) -> GenerationRequest:
    return dataclasses.replace(request(prompt, **params), trace_context=TRACEPARENT)


@pytest.mark.model
async def test_a_traced_request_gets_every_phase_stamped_in_order_an_untraced_one_only_the_metric_ones(
    make_engine,
) -> None:
    engine = await make_engine(kv_budget_tokens=64, enable_prefix_caching=False)
    traced = [out async for out in engine.generate(_traced(prompt_of(10, 7), max_tokens=3, ignore_eos=True))]
    events = [e for out in traced for e in out.events]
    assert [e.kind for e in events] == ["queued", "scheduled", "prefill_done", "first_token", "finished"]
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)
    assert [e.kind for e in traced[0].events][-1] == "first_token"  # they ride on the output they describe
    assert [e.kind for e in traced[-1].events] == ["finished"]
    plain = await run(engine, prompt_of(10, 8), max_tokens=3, ignore_eos=True)
    assert [e.kind for out in plain for e in out.events] == ["queued", "scheduled"]

    # Three rows that outgrow the KV pool: a traced one preempted shows it, and its re-prefill does not
    # claim a second first token.
    together = await asyncio.gather(
        *(
            _collect(engine.generate(_traced(prompt_of(10, i), max_tokens=40, ignore_eos=True)))
            for i in range(3)
        )
    )
    kinds = [[e.kind for o in outs for e in o.events] for outs in together]
    preempted = [k for k in kinds if "preempted" in k]
    assert preempted, kinds
    for k in kinds:
        assert k.count("first_token") == 1
        assert k[-1] == "finished"
        assert k.count("prefill_done") == k.count("preempted") + 1


async def _collect(outputs: AsyncIterator[GenerationOutput]) -> list[GenerationOutput]:
    return [out async for out in outputs]
