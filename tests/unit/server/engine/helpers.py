"""Small helpers shared by the engine tests."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from modelyard.server.engine import GenerationOutput, GenerationRequest, SamplingParams
from modelyard.server.engine.engine import TorchEngine

_ids = itertools.count()


def request(prompt: list[int], **params: Any) -> GenerationRequest:
    params.setdefault("max_tokens", 8)
    params.setdefault("temperature", 0.0)
    return GenerationRequest(
        request_id=f"req-{next(_ids)}", prompt_token_ids=prompt, params=SamplingParams(**params)
    )


async def run(engine: TorchEngine, prompt: list[int], **params: Any) -> list[GenerationOutput]:
    return [out async for out in engine.generate(request(prompt, **params))]


def tokens(outputs: list[GenerationOutput]) -> list[int]:
    return [t for out in outputs for t in out.token_ids]


async def greedy(
    engine: TorchEngine, prompt: list[int], max_tokens: int, lora: str | None = None
) -> list[int]:
    """``max_tokens`` greedy tokens (EOS ignored) for ``prompt``, under the adapter ``lora`` (None: base)."""
    req = request(prompt, max_tokens=max_tokens, ignore_eos=True)
    req.lora_name = lora
    return tokens([out async for out in engine.generate(req)])


async def wait_until(predicate: Any, within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def prompt_of(length: int, offset: int = 0) -> list[int]:
    # Ids from 3 up avoid pad/eos; vary with offset so prompts differ.
    return [3 + (offset * 37 + i * 11) % 500 for i in range(length)]
