"""The batched KV cache is architecture-agnostic: several HF families decode exactly as a no-cache forward."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
import transformers

from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import LoadedModel, load_model
from tests.unit.server.engine.conftest import save_tokenizer
from tests.unit.server.engine.helpers import prompt_of, run, tokens

pytestmark = pytest.mark.model

COMMON = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "max_position_embeddings": 256}  # fmt: skip
CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, num_key_value_heads=2),
    # A window shorter than the prompts, so the sliding mask matters (and across prefill chunks).
    "mistral-sliding": lambda: transformers.MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=8),
    "gemma2": lambda: transformers.Gemma2Config(
        **COMMON, num_key_value_heads=2, head_dim=16, sliding_window=8
    ),
    "gpt-neox": lambda: transformers.GPTNeoXConfig(**COMMON),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    path: Path = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(CONFIGS[request.param]()).save_pretrained(path)
    save_tokenizer(path)
    return load_model(EngineConfig(model=str(path), device="cpu"))


def assert_greedy(model: torch.nn.Module, prompt: list[int], generated: list[int]) -> None:
    """Each generated token is the argmax of a full no-cache forward (up to fp32 near-ties)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1]
    chosen = logits.gather(1, torch.tensor(generated)[:, None]).squeeze(1)
    assert torch.all(logits.max(dim=-1).values - chosen < 1e-4), (prompt, generated)


async def test_batched_chunked_decoding_matches_a_full_forward(loaded: LoadedModel) -> None:
    engine = TorchEngine(loaded, EngineConfig(model=loaded.name, device="cpu", max_prefill_tokens=16))
    await engine.start()
    try:
        prompts = [prompt_of(n, i) for i, n in enumerate([3, 20, 9, 30])]

        async def staggered(i: int, prompt: list[int]) -> list[int]:
            await asyncio.sleep(0.01 * i)
            return tokens(await run(engine, prompt, max_tokens=12, ignore_eos=True))

        together = await asyncio.gather(*(staggered(i, p) for i, p in enumerate(prompts)))
        for prompt, generated in zip(prompts, together, strict=True):
            assert len(generated) == 12
            assert_greedy(loaded.model, prompt, generated)
    finally:
        await engine.stop()
