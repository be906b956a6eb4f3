"""The CPU KV pool has a fixed byte budget (--kv-cache-memory), never a share of host memory, and an
embedding engine allocates no pool at all."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from modelyard.server.engine import GenerationRequest, PromptTooLongError, SamplingParams
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.host.memory import DEFAULT_CPU_KV_BYTES, cpu_kv_tokens
from modelyard.server.settings import parse_settings

# The conftest's tiny Llama: 2 layers x 2 KV heads x head_dim 16 x (K and V) x 4 bytes.
PER_TOKEN = 2 * 2 * 16 * 2 * 4


def test_budget_caps_what_the_rows_would_need() -> None:
    assert cpu_kv_tokens(64 * 4096, 46_080, 1 << 30) == (1 << 30) // 46_080
    assert cpu_kv_tokens(1024, 46_080, 1 << 30) == 1024, "rows x context below the budget: that much"
    assert cpu_kv_tokens(1024, 46_080) == 1024
    assert DEFAULT_CPU_KV_BYTES == 4 << 30


def test_flag_and_environment_reach_the_engine_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings([]).engine_config("m").kv_cache_memory_bytes == 4 << 30
    assert parse_settings(["--kv-cache-memory", "64MiB"]).engine_config("m").kv_cache_memory_bytes == 64 << 20
    assert parse_settings(["--kv-cache-memory", "1000000"]).engine_config("m").kv_cache_memory_bytes == 10**6
    monkeypatch.setenv("MODELYARD_SERVER_KV_CACHE_MEMORY", "2GiB")
    assert parse_settings([]).engine_config("m").kv_cache_memory_bytes == 2 << 30


async def test_engine_pool_is_the_budget_when_rows_need_more(
    make_engine: Callable[..., Awaitable[TorchEngine]],
) -> None:
    budget = PER_TOKEN * 16 * 10  # ten blocks
    engine = await make_engine(max_num_seqs=64, max_model_len=256, kv_cache_memory_bytes=budget)
    assert engine.kv_capacity_tokens == 160
    # A request that could never fit that pool is refused up front, not left to starve.
    params = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    with pytest.raises(PromptTooLongError):
        async for _ in engine.generate(GenerationRequest("big", list(range(3, 103)), params)):
            pass


async def test_engine_pool_is_what_the_rows_need_under_the_budget(
    make_engine: Callable[..., Awaitable[TorchEngine]],
) -> None:
    engine = await make_engine(max_num_seqs=4, max_model_len=256)
    assert engine.kv_capacity_tokens == 4 * 256
