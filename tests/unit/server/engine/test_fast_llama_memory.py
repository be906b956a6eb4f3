"""The engine process frees the plain projection weights beside the fast forward's packed copies
(``TorchEngine.release_unused_weights``): each decoder weight then exists once, and the tokens stay
transformers' (one stream, so one-row steps, and several streams), LoRA adapters' too."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import transformers

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.fast_llama import FastLlama, unsupported_reason
from modelyard.server.engine.model.loader import load_model
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.unit.server.engine.helpers import greedy, prompt_of, run, tokens
from tests.unit.server.engine.test_fast_llama import CONFIGS, save_tokenizer

pytestmark = pytest.mark.model

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = tmp_path_factory.mktemp(f"release-{request.param}")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(path)
    save_tokenizer(path)
    return path


def _projection_bytes(model: torch.nn.Module) -> int:
    return sum(
        p.numel() * p.element_size()
        for name, p in model.named_parameters()
        if name.rsplit(".", 2)[-2] in PROJECTIONS and name.endswith("weight")
    )


async def _workload(engine: TorchEngine) -> list[list[int]]:
    alone = tokens(await run(engine, prompt_of(9, 1), max_tokens=12, ignore_eos=True))  # one-row steps
    together = await asyncio.gather(
        *(run(engine, prompt_of(5 + 7 * i, i), max_tokens=10, ignore_eos=True) for i in range(5))
    )
    return [alone, *(tokens(t) for t in together)]


async def test_released_weights_exist_once_and_give_the_same_tokens(model_dir: Path) -> None:
    config = EngineConfig(model=str(model_dir), device="cpu", fast_decode="on", max_prefill_tokens=16)
    reference_config = EngineConfig(model=str(model_dir), device="cpu", fast_decode="off")
    reference = TorchEngine(load_model(reference_config), reference_config)
    engine = TorchEngine(load_model(config), config)
    model = engine._runner.model.model
    expected_bytes = _projection_bytes(model)
    assert expected_bytes > 0
    assert engine.release_unused_weights() == expected_bytes
    for name, param in model.named_parameters():
        # The decoder projections are weightless now; embeddings, norms and biases stay.
        assert param.is_meta == (name.rsplit(".", 2)[-2] in PROJECTIONS and name.endswith("weight")), name
    fast = engine._runner.model
    assert isinstance(fast, FastLlama)
    assert all(
        lin.weight.is_meta and lin.packed is not None for layer in fast.layers for lin in layer.linears
    )
    # No second fast forward over a model whose weights went to the first.
    assert unsupported_reason(model) is not None
    await reference.start()
    await engine.start()
    try:
        assert await _workload(engine) == await _workload(reference)
    finally:
        await engine.stop()
        await reference.stop()


async def test_nothing_is_released_without_packed_copies(model_dir: Path) -> None:
    config = EngineConfig(model=str(model_dir), device="cpu", fast_decode="off")
    engine = TorchEngine(load_model(config), config)
    assert engine.release_unused_weights() == 0
    assert not any(p.is_meta for p in engine._runner.model.parameters())


async def test_adapters_after_release_give_pefts_tokens(model_dir: Path, tmp_path: Path) -> None:
    adapter = make_adapter(model_dir, tmp_path / "all", r=8, alpha=32, seed=1)
    config = EngineConfig(model=str(model_dir), device="cpu", enable_lora=True, max_loras=2)
    engine = TorchEngine(load_model(config), config)
    assert engine.release_unused_weights() > 0
    await engine.start()
    try:
        await engine.add_lora("all", str(adapter))
        prompts = [(prompt_of(6 + 5 * i, i), "all" if i % 2 else None) for i in range(4)]
        first = await greedy(engine, prompts[0][0], 8, prompts[0][1])
        got = [first, *await asyncio.gather(*(greedy(engine, p, 8, n) for p, n in prompts))]
    finally:
        await engine.stop()
    expected = [peft_greedy(model_dir, adapter if n else None, p, 8) for p, n in [prompts[0], *prompts]]
    assert got == expected
