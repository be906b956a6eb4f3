"""Interleaved A/B rounds on one in-process engine, a part of its runner swapped between rounds.

Shared by the bench scripts that compare variants of one engine piece (the decode step, the forward):
every round drives the same greedy workload once per variant, in an order that reverses each round
(ABBA...), so a neighbour's load falls on every variant alike. Figures are per wall second and per
CPU second of this process.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

V = TypeVar("V")


async def drive(
    engine: Any, prompts: list[list[int]], new_tokens: int, tag: str
) -> tuple[float, float, list[list[int]]]:
    """(tokens per wall second, tokens per CPU second of this process, each stream's tokens)."""
    from modelyard.server.engine import GenerationRequest, SamplingParams

    async def one(i: int, ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=new_tokens, temperature=0.0, ignore_eos=True)
        return [
            t
            async for out in engine.generate(GenerationRequest(f"{tag}-{i}", ids, params))
            for t in out.token_ids
        ]

    start, cpu = time.perf_counter(), time.process_time()
    outs = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
    count = sum(len(o) for o in outs)
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu), outs


@dataclass
class Rounds:
    """Each variant's figure per round, and the tokens of its first round."""

    tok_s: dict[str, list[float]] = field(default_factory=dict)
    tok_per_cpu_s: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, list[list[int]]] = field(default_factory=dict)

    def over(self, base: str) -> dict[str, float]:
        """Each variant's median tok/s over ``base``'s."""
        return _ratios(self.tok_s, base)

    def cpu_over(self, base: str) -> dict[str, float]:
        """Each variant's median tokens per CPU second over ``base``'s."""
        return _ratios(self.tok_per_cpu_s, base)

    def same_tokens_as(self, base: str) -> dict[str, bool]:
        return {k: v == self.tokens[base] for k, v in self.tokens.items()}


async def alternate(
    engine: Any,
    variants: Mapping[str, V],
    swap: Callable[[V], None],
    prompts: list[list[int]],
    new_tokens: int,
    rounds: int,
) -> Rounds:
    """``rounds`` rounds over ``variants``, ``swap`` putting each into the engine before its run."""
    result = Rounds({v: [] for v in variants}, {v: [] for v in variants})
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for variant in order:
            swap(variants[variant])
            rate, cpu_rate, outs = await drive(engine, prompts, new_tokens, variant)
            result.tok_s[variant].append(round(rate, 1))
            result.tok_per_cpu_s[variant].append(round(cpu_rate, 1))
            result.tokens.setdefault(variant, outs)
    return result


def _ratios(figures: dict[str, list[float]], base: str) -> dict[str, float]:
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {k: round(v / medians[base], 3) for k, v in medians.items()}
