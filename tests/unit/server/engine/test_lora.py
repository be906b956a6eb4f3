"""Multi-LoRA batching: adapter rows and base rows in one forward give PEFT's tokens, row by row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.fast_llama import FastLlama
from modelyard.server.engine.lora import LoraError, LoraNotFoundError
from modelyard.server.engine.lora.fused import lora_of
from modelyard.server.engine.model.loader import load_model
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.unit.server.engine.helpers import greedy, prompt_of, request, tokens

pytestmark = pytest.mark.model

N = 10


@pytest.fixture(scope="module")
def adapters(model_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = model_dirs["llama"]
    root = tmp_path_factory.mktemp("adapters")
    return {
        "all8": make_adapter(base, root / "all8", r=8, alpha=16, seed=1),
        "attn4": make_adapter(base, root / "attn4", r=4, alpha=8, targets=["q_proj", "v_proj"], seed=2),
        "mlp16rs": make_adapter(
            base,
            root / "mlp16rs",
            r=16,
            alpha=32,
            targets=["gate_proj", "up_proj", "down_proj"],
            seed=3,
            rslora=True,
        ),
    }


@pytest.fixture
async def lora_engine(model_dirs: dict[str, Path]) -> AsyncIterator[Callable[..., object]]:
    started: list[TorchEngine] = []

    async def factory(**overrides: object) -> TorchEngine:
        options: dict[str, object] = {"enable_lora": True, "max_loras": 3, "max_lora_rank": 16}
        options.update(overrides)
        config = EngineConfig(model=str(model_dirs["llama"]), device="cpu", **options)  # type: ignore[arg-type]
        engine = TorchEngine(load_model(config), config)  # a fresh model: wrapping changes it in place
        await engine.start()
        started.append(engine)
        return engine

    yield factory
    for engine in started:
        await engine.stop()


@pytest.mark.parametrize("fast_decode", ["auto", "off"])
async def test_each_adapter_matches_peft_and_a_mixed_batch_is_exact_row_by_row(
    lora_engine, adapters: dict[str, Path], model_dirs: dict[str, Path], fast_decode: str
) -> None:
    engine = await lora_engine(fast_decode=fast_decode)
    for name, path in adapters.items():
        await engine.add_lora(name, str(path))
    base = model_dirs["llama"]
    names: list[str | None] = [None, *adapters]
    prompts = [prompt_of(6 + 3 * i, i) for i in range(12)]
    rows = [(prompts[i], names[i % 4]) for i in range(12)]
    expected = [peft_greedy(base, adapters[n] if n else None, p, N) for p, n in rows]
    # The adapters really change the answer (otherwise this test would prove nothing).
    assert len({tuple(expected[i]) for i in range(4)} | {tuple(peft_greedy(base, None, prompts[1], N))}) > 1
    got = await asyncio.gather(*(greedy(engine, p, N, n) for p, n in rows))
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"row {i} ({rows[i][1] or 'base'})"


async def test_adapter_rows_run_the_fast_path_when_lora_is_on(
    lora_engine, adapters: dict[str, Path], model_dirs: dict[str, Path]
) -> None:
    """LoRA must not silently fall back to the eager modules: the fast forward serves the adapter rows
    (it alone builds the fused per-group pairs) and its tokens are PEFT's, prefill and decode."""
    engine = await lora_engine()
    assert isinstance(engine._runner.model, FastLlama)
    fused = lora_of(engine._runner.model.model)
    assert fused is not None
    await engine.add_lora("all8", str(adapters["all8"]))
    prompt = prompt_of(20, 3)
    assert await greedy(engine, prompt, N, "all8") == peft_greedy(
        model_dirs["llama"], adapters["all8"], prompt, N
    )
    assert any(pairs is not None for pairs in fused._pairs)


async def test_prefix_cache_never_serves_one_adapters_kv_to_another(
    lora_engine, adapters: dict[str, Path], model_dirs: dict[str, Path]
) -> None:
    engine = await lora_engine()
    await engine.add_lora("all8", str(adapters["all8"]))
    prompt = prompt_of(80, 9)
    base_tokens = await greedy(engine, prompt, N, None)
    adapted = await greedy(engine, prompt, N, "all8")
    assert adapted == peft_greedy(model_dirs["llama"], adapters["all8"], prompt, N)
    assert adapted != base_tokens
    assert await greedy(engine, prompt, N, None) == base_tokens
    assert engine.stats().prefix_cache_hits > 0  # the same adapter's repeat was served from the cache


async def test_more_adapters_than_slots_wait_for_one_and_are_exact(
    lora_engine, adapters: dict[str, Path], model_dirs: dict[str, Path]
) -> None:
    engine = await lora_engine(max_loras=1, max_cpu_loras=1)  # the host cache re-reads evicted ones
    for name, path in adapters.items():
        await engine.add_lora(name, str(path))
    prompt = prompt_of(9, 4)
    got = await asyncio.gather(*(greedy(engine, prompt, N, n) for n in adapters))
    for name, g in zip(adapters, got, strict=True):
        assert g == peft_greedy(model_dirs["llama"], adapters[name], prompt, N), name


async def test_unload_lets_running_requests_finish_and_refuses_new_ones(lora_engine, adapters) -> None:
    engine = await lora_engine()
    await engine.add_lora("all8", str(adapters["all8"]))
    req = request(prompt_of(8, 1), max_tokens=40, ignore_eos=True)
    req.lora_name = "all8"
    stream = engine.generate(req)
    first = await anext(stream)
    await engine.remove_lora("all8")
    rest = [out async for out in stream]
    assert len(tokens([first, *rest])) == 40
    assert rest[-1].finish_reason == "length"
    with pytest.raises(LoraNotFoundError):
        await greedy(engine, prompt_of(8, 1), N, "all8")
    await engine.add_lora("all8", str(adapters["all8"]))  # the name is free again
    assert len(await greedy(engine, prompt_of(8, 1), N, "all8")) == N


async def test_bad_adapters_are_refused_with_a_reason(
    lora_engine, adapters: dict[str, Path], model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    engine = await lora_engine(max_lora_rank=8)
    with pytest.raises(LoraError, match="no adapter directory"):
        await engine.add_lora("missing", str(tmp_path / "nope"))
    with pytest.raises(LoraError, match="over the server's --max-lora-rank 8"):
        await engine.add_lora("big", str(adapters["mlp16rs"]))
    other = model_dirs["gpt2"]  # GPT-2 has no q_proj ... : an unknown target for a Llama adapter
    with pytest.raises(LoraError, match="not supported"):
        await engine.add_lora("gpt2", str(make_adapter(other, tmp_path / "gpt2", targets=["c_attn"])))
    wide = make_adapter(model_dirs["llama"], tmp_path / "wide", targets=["q_proj"])
    _reshape(wide)
    with pytest.raises(LoraError, match="shape mismatch"):
        await engine.add_lora("wide", str(wide))
    await engine.add_lora("all8", str(adapters["all8"]))
    with pytest.raises(LoraError, match="already loaded"):
        await engine.add_lora("all8", str(adapters["attn4"]))
    assert engine.lora_names() == ["all8"]
    assert len(await greedy(engine, prompt_of(5), N, "all8")) == N  # still serving


def _reshape(adapter: Path) -> None:
    """Give the adapter's lora_A a wider input than the base layer has."""
    import torch
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    tensors = load_file(str(path))
    for key, value in list(tensors.items()):
        if "lora_A" in key:
            tensors[key] = torch.cat([value, value], dim=1)
    save_file(tensors, str(path))
