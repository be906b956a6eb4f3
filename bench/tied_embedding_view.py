"""Decode cost of serving SmolLM2's tied input embedding as a view of the checkpoint (what the loader does
since the head runs over its own packed copy) against an owned copy, in one process: two engines on the
same checkpoint, rounds of 16 greedy streams of 32+32 tokens alternating A B B A..., process CPU time
per output token, and whether both give the same tokens. The load order is an argument because the
first-loaded engine measured slower in either role. Not a test.

    python bench/tied_embedding_view.py [--first owned|mapped] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.modules["triton"] = None  # type: ignore[assignment]  # as the CPU engine process does

from modelyard.server.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from modelyard.server.engine.engine import TorchEngine  # noqa: E402
from modelyard.server.engine.model.loader import load_model  # noqa: E402

CHECKPOINT = Path.home() / ".cache" / "modelyard" / "models" / "smollm2-135m-instruct"
STREAMS, PROMPT, NEW = 16, 32, 32


async def _engine(view: bool) -> TorchEngine:
    config = EngineConfig(model=str(CHECKPOINT), device="cpu")
    loaded = load_model(config)
    embedding = loaded.model.get_input_embeddings()  # type: ignore[operator]
    if not view:
        embedding.weight.data = embedding.weight.detach().clone()
    engine = TorchEngine(loaded, config, kv_budget_tokens=4096)
    engine.release_unused_weights()
    await engine.start()
    return engine


async def _round(engine: TorchEngine, prompts: list[list[int]]) -> tuple[float, list[list[int]]]:
    async def one(index: int, prompt: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)
        request = GenerationRequest(request_id=f"r{index}", prompt_token_ids=prompt, params=params)
        return [t async for out in engine.generate(request) for t in out.token_ids]

    started = time.process_time()
    outputs = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return (time.process_time() - started) / (STREAMS * NEW) * 1e3, outputs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--first", choices=("owned", "mapped"), default="mapped")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    if not (CHECKPOINT / "model.safetensors").exists():
        raise SystemExit(f"{CHECKPOINT} missing: run modelyard-local once to build it")
    names = [args.first, "owned" if args.first == "mapped" else "mapped"]
    engines = {name: await _engine(view=name == "mapped") for name in names}
    prompts = [[1] + [(i * 97 + j * 13) % 40000 + 100 for j in range(PROMPT)] for i in range(STREAMS)]
    for engine in engines.values():
        await _round(engine, prompts)  # warm-up
    ms: dict[str, list[float]] = {name: [] for name in names}
    tokens: dict[str, list[list[int]]] = {}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            cost, tokens[name] = await _round(engines[name], prompts)
            ms[name].append(cost)
    print(f"same tokens: {tokens['mapped'] == tokens['owned']}")
    for name, values in ms.items():
        print(f"{name}: {statistics.median(values):.3f} CPU ms per output token (median of {len(values)})")
    for engine in engines.values():
        await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
