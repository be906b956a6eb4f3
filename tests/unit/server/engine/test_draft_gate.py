"""Speculative decoding's draft gate: a step keeps the drafts that raise its expected tokens per unit of
forward cost, judged by each request's running acceptance rate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from modelyard.server.engine.core.draft_gate import CPU_KNEE_ROWS, gate, knee_rows, observe
from modelyard.server.engine.core.sequence import Sequence
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.sampler import SamplingRow
from modelyard.server.engine.types import GenerationRequest, SamplingParams, SpeculativeConfig
from tests.unit.server.engine.helpers import run

KNEE = CPU_KNEE_ROWS


def _seq(key: int, draft: list[int], acceptance: float) -> Sequence:
    request = GenerationRequest(f"r{key}", [1, 2, 3], SamplingParams(max_tokens=50))
    row = SamplingRow(request.params, request.prompt_token_ids, frozenset())
    seq = Sequence(key, request, asyncio.Queue(), row)
    seq.draft, seq.draft_acceptance = list(draft), acceptance
    return seq


def test_a_lone_request_with_a_likely_draft_feeds_it() -> None:
    seq = _seq(0, [7, 8, 9, 10], acceptance=0.9)
    gate([seq], KNEE)
    assert seq.draft == [7, 8, 9, 10]


def test_a_lone_request_feeds_even_a_middling_draft_since_a_small_forward_costs_about_one_row() -> None:
    seq = _seq(0, [7, 8, 9, 10], acceptance=0.3)
    gate([seq], KNEE)
    assert seq.draft


def test_a_busy_step_drops_drafts_that_are_rarely_accepted() -> None:
    rows = [_seq(i, [7, 8, 9, 10], acceptance=0.31) for i in range(16)]
    gate(rows, KNEE)
    assert all(not s.draft for s in rows)


def test_one_draft_among_many_plain_rows_is_not_worth_a_forward_of_its_own() -> None:
    rows = [_seq(0, [7, 8, 9, 10], acceptance=0.95)] + [_seq(i, [], 0.8) for i in range(1, 16)]
    gate(rows, KNEE)
    assert rows[0].draft == []


def test_the_most_promising_drafts_are_kept_first() -> None:
    good = [_seq(i, [7, 8, 9, 10], acceptance=1.0) for i in range(4)]
    poor = [_seq(10 + i, [7, 8, 9, 10], acceptance=0.05) for i in range(4)]
    gate(poor + good, KNEE)
    assert all(s.draft for s in good)
    assert all(not s.draft for s in poor)


def test_an_accelerator_keeps_drafts_at_batch_sizes_where_a_cpu_drops_them() -> None:
    assert knee_rows("cuda") > knee_rows("cpu") == CPU_KNEE_ROWS
    rows = [_seq(i, [7, 8, 9, 10], acceptance=0.5) for i in range(16)]
    gate(rows, knee_rows("cuda"))
    assert all(s.draft for s in rows)


def test_acceptance_is_a_running_rate_of_verified_drafts() -> None:
    seq = _seq(0, [7, 8, 9, 10], acceptance=0.8)
    for _ in range(10):
        observe(seq, 0)
    assert seq.draft_acceptance < 0.05
    for _ in range(10):
        observe(seq, 4)
    assert seq.draft_acceptance > 0.95
    seq.draft = []
    observe(seq, 0)  # no draft this step: nothing to learn
    assert seq.draft_acceptance > 0.95


Factory = Callable[..., Awaitable[TorchEngine]]
SPEC = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, prompt_lookup_max=3)


def test_a_dropped_draft_is_tried_again_after_a_while() -> None:
    rows = [_seq(i, [], acceptance=0.6) for i in range(16)]
    steps = 0
    while not rows[0].draft:
        assert steps < 200, "never tried again"
        for s in rows:
            s.draft = [7, 8, 9, 10]
        gate(rows, KNEE)
        steps += 1
    assert steps > 5  # not at once: probing a busy step costs throughput


# Many distinct ids: whatever the random model emits, a 1-gram of it often occurred before, so most
# decoding steps propose a draft (which a random model rarely confirms).
PROMPTS = [list(range(3 + i, 203 + i)) for i in range(16)]


async def _drafts(engine: TorchEngine, prompts: list[list[int]]) -> int:
    before = engine.stats().spec_decode_num_drafts
    await asyncio.gather(*(run(engine, p, max_tokens=40, ignore_eos=True) for p in prompts))
    return engine.stats().spec_decode_num_drafts - before


@pytest.mark.model
async def test_a_busy_cpu_engine_stops_drafting_for_requests_whose_drafts_miss(
    make_engine: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = await make_engine(speculative=SPEC)
    with monkeypatch.context() as patch:
        patch.setattr("modelyard.server.engine.core.scheduler.gate", lambda decoding, knee: None)
        alone_ungated = await _drafts(spec, PROMPTS[:1])
        busy_ungated = await _drafts(spec, PROMPTS)
    # Alone, a request drafts from its first step: a small forward costs about what one row does
    # (until its drafts have missed often enough that even that is not worth it).
    assert 0 < await _drafts(spec, PROMPTS[:1]) <= alone_ungated
    # Sixteen at once: after the first misses the gate drops their drafts (a probe now and then).
    busy = await _drafts(spec, PROMPTS)
    assert busy <= 4 * len(PROMPTS) < busy_ungated, (busy, busy_ungated)
