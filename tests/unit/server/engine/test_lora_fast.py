"""Adapter rows on the fast Llama-family forward (``fast_llama.py`` + ``lora/fused.py``): PEFT's greedy
tokens on every supported shape (biased Q/K/V, Q/K norms, a sliding window), rows of three adapters and
base rows in one batch, prompts long enough to be prefilled in several chunks; and base-only batches
take no LoRA work at all."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import transformers

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.fast_llama import FastLlama
from modelyard.server.engine.lora import fused as fused_module
from modelyard.server.engine.lora.fused import Deltas, lora_of
from modelyard.server.engine.model.loader import load_model
from tests.fixtures.lora import make_adapter, peft_greedy
from tests.unit.server.engine.helpers import greedy, prompt_of
from tests.unit.server.engine.test_fast_llama import CONFIGS, save_tokenizer

pytestmark = pytest.mark.model

N = 8


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def family(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Path]]:
    root: Path = tmp_path_factory.mktemp(f"lora-{request.param}")
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(root / "base")
    save_tokenizer(root / "base")
    base = root / "base"
    adapters = {
        "all": make_adapter(base, root / "all", r=8, alpha=32, seed=1),
        "qv": make_adapter(base, root / "qv", r=4, alpha=16, targets=["q_proj", "v_proj"], seed=2),
        "mlp": make_adapter(base, root / "mlp", r=16, alpha=32, targets=["up_proj", "down_proj"], seed=3),
    }
    return base, adapters


@pytest.mark.parametrize("kernel", ["stacked", "segments"])
async def test_mixed_adapter_batches_on_the_fast_path_give_pefts_tokens(
    family: tuple[Path, dict[str, Path]], kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both kernels: every loaded adapter side by side (small ranks), and per-adapter segments."""
    base, adapters = family
    if kernel == "segments":
        monkeypatch.setattr(fused_module, "STACKED_MAX_RANKS", 0)
        monkeypatch.setattr(fused_module, "STACKED_MAX_TOKENS", 0)
    # Small prefill chunks: long prompts are computed over several forwards, beside decode rows.
    config = EngineConfig(model=str(base), device="cpu", enable_lora=True, max_loras=3, max_lora_rank=16,
                          max_prefill_tokens=48)  # fmt: skip
    engine = TorchEngine(load_model(config), config)
    await engine.start()
    try:
        assert isinstance(engine._runner.model, FastLlama)
        fused = lora_of(engine._runner.model.model)
        assert fused is not None
        kinds: set[str] = set()
        original = fused.active

        def spy(rows: int, query: int) -> Deltas | None:
            result = original(rows, query)
            kinds.add(type(result).__name__)
            return result

        fused.active = spy  # type: ignore[method-assign]
        for name, path in adapters.items():
            await engine.add_lora(name, str(path))
        names: list[str | None] = [None, *adapters]
        rows = [(prompt_of(5 + 9 * i, i), names[i % 4]) for i in range(8)]
        got = await asyncio.gather(*(greedy(engine, p, N, n) for p, n in rows))
    finally:
        await engine.stop()
    assert {"StackedDeltas" if kernel == "stacked" else "SegmentDeltas", "NoneType"} <= kinds
    expected = [peft_greedy(base, adapters[n] if n else None, p, N) for p, n in rows]
    assert len({tuple(e) for e in expected}) > 4  # the adapters change the answers
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert g == e, f"row {i} ({rows[i][1] or 'base'})"


async def test_base_rows_with_lora_on_take_no_lora_work(model_dirs: dict[str, Path]) -> None:
    config = EngineConfig(model=str(model_dirs["llama"]), device="cpu", enable_lora=True)
    engine = TorchEngine(load_model(config), config)
    await engine.start()
    try:
        fused = lora_of(engine._runner.model.model)
        assert fused is not None
        calls: list[Deltas | None] = []
        original = fused.active

        def spy(rows: int, query: int) -> Deltas | None:
            result = original(rows, query)
            calls.append(result)
            return result

        fused.active = spy  # type: ignore[method-assign]
        await asyncio.gather(*(greedy(engine, prompt_of(6 + i, i), N, None) for i in range(4)))
    finally:
        await engine.stop()
    assert calls
    assert all(result is None for result in calls)
