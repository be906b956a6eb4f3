"""Speculative decoding with prompt-lookup drafts: the same tokens as plain decoding at temperature 0
(and with a seed), the model's own distribution when sampling, and vLLM's counters."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from scipy.stats import chi2_contingency

from modelyard.server.engine import GenerationOutput
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.types import SpeculativeConfig
from tests.unit.server.engine.helpers import run, tokens

Factory = Callable[..., Awaitable[TorchEngine]]
SPEC = SpeculativeConfig(num_speculative_tokens=4, prompt_lookup_min=1, prompt_lookup_max=3)
# Repetitive prompts (a "rewrite"), so the prompt offers drafts from the first step on.
PROMPTS = [[5, 6, 7, 8, 9, 10] * 4, [20, 21, 22] * 6 + [20, 21], [40, 41, 42, 43, 44] * 3, [7, 7, 7, 7, 8]]


@pytest.fixture(autouse=True)
def every_draft_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests check what verification yields in batches of any size, so every proposed draft is
    fed; whether a draft pays for its forward is the draft gate's part (``test_draft_gate.py``)."""
    monkeypatch.setattr("modelyard.server.engine.core.scheduler.gate", lambda decoding, knee: None)


async def _both(make_engine: Factory, **extra: Any) -> tuple[TorchEngine, TorchEngine]:
    return await make_engine(**extra), await make_engine(speculative=SPEC, **extra)


async def _all(engine: TorchEngine, prompts: list[list[int]], **params: Any) -> list[list[GenerationOutput]]:
    return list(await asyncio.gather(*(run(engine, p, **params) for p in prompts)))


async def test_greedy_tokens_and_logprobs_are_those_of_plain_decoding(make_engine: Factory) -> None:
    plain, spec = await _both(make_engine)
    prompts = PROMPTS * 2  # n > 1: the same prompt twice in one batch
    params: dict[str, Any] = {"max_tokens": 40, "logprobs": 2, "ignore_eos": True}
    expected, got = await _all(plain, prompts, **params), await _all(spec, prompts, **params)
    assert [tokens(o) for o in got] == [tokens(o) for o in expected]
    for a, b in zip(expected, got, strict=True):
        lp_a = [lp for out in a for lp in out.logprobs or ()]
        lp_b = [lp for out in b for lp in out.logprobs or ()]
        assert [x.token_id for x in lp_a] == [x.token_id for x in lp_b]
        assert [x.logprob for x in lp_b] == pytest.approx([x.logprob for x in lp_a], abs=1e-4)
    stats = spec.stats()
    assert stats.spec_decode_num_drafts > 0
    assert 0 < stats.spec_decode_num_accepted_tokens <= stats.spec_decode_num_draft_tokens
    assert plain.stats().spec_decode_num_drafts == 0


async def test_stop_tokens_and_max_tokens_cut_a_draft_where_plain_decoding_stops(
    make_engine: Factory,
) -> None:
    plain, spec = await _both(make_engine)
    base = tokens(await run(plain, PROMPTS[0], max_tokens=30, ignore_eos=True))
    stop = base[7]  # a token the model produces: the output must end right before it
    for max_tokens in (1, 2, 5, 13):
        for engine_params in (
            {"max_tokens": max_tokens, "ignore_eos": True},
            {"stop_token_ids": frozenset({stop})},
        ):
            params = {"max_tokens": 30, **engine_params}
            a, b = await run(plain, PROMPTS[0], **params), await run(spec, PROMPTS[0], **params)
            assert tokens(b) == tokens(a)
            assert b[-1].finish_reason == a[-1].finish_reason


async def test_seeded_sampling_gives_the_same_tokens(make_engine: Factory) -> None:
    plain, spec = await _both(make_engine)
    params: dict[str, Any] = {"max_tokens": 30, "temperature": 0.7, "ignore_eos": True}
    for seed in range(4):
        a = await run(plain, PROMPTS[seed], seed=seed, **params)
        b = await run(spec, PROMPTS[seed], seed=seed, **params)
        assert tokens(b) == tokens(a)


async def test_sampled_tokens_follow_the_models_distribution(make_engine: Factory) -> None:
    """Two-sample chi-square on the tokens after the first (those speculation verified): same
    distribution with and without speculation."""
    plain, spec = await _both(make_engine, max_num_seqs=64)
    prompt = [5, 6, 7, 8] * 5
    params: dict[str, Any] = {"max_tokens": 4, "temperature": 1.5, "top_k": 6, "ignore_eos": True}
    counts: list[collections.Counter[tuple[int, int]]] = []
    for engine in (plain, spec):
        outs = await _all(engine, [prompt] * 600, **params)
        counts.append(collections.Counter((t[0], t[1]) for t in (tokens(o) for o in outs)))
    assert spec.stats().spec_decode_num_accepted_tokens > 0, "drafts were verified and some accepted"
    keys = [k for k in set(counts[0]) | set(counts[1]) if counts[0][k] + counts[1][k] >= 10]
    other = [sum(c[k] for k in c if k not in keys) for c in counts]
    table = [[c[k] for k in keys] + ([o] if sum(other) else []) for c, o in zip(counts, other, strict=True)]
    assert len(keys) >= 3, "enough outcomes to compare"
    p_value = chi2_contingency(table).pvalue
    assert p_value > 0.001, f"distributions differ (p={p_value:.2g})"
