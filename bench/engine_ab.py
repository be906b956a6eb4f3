"""One engine workload in-process, for A/B timing of two checkouts as whole processes.

Runs ``TorchEngine`` from whatever ``modelyard.server`` is first on ``PYTHONPATH`` (so two checkouts can
be compared with an outside timer, alternating A B A B) on the SmolLM-135M-shaped random Llama, one
thread, all requests submitted at once, greedy, EOS ignored; prints the output tok/s of the timed round
after a warm-up round. Not a test.

    PYTHONPATH=/path/to/checkout/server python bench/engine_ab.py --streams 16 --prompt 32 --new 32
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import load_model
from server_throughput import build_model_dir, make_prompts, run_engine

MODEL_DIR = Path.home() / ".cache" / "modelyard" / "bench" / "smollm-135m-random"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    config = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype="float32", max_model_len=1024)
    engine = TorchEngine(load_model(config), config)
    _, prompts = make_prompts(MODEL_DIR, args.streams, args.prompt)
    await engine.start()
    try:
        await run_engine(engine, prompts, 4, "warm")
        result = await run_engine(engine, prompts, args.new, "bench")
    finally:
        await engine.stop()
    print(f"{result.summary()['output_tok_s']} tok/s")


if __name__ == "__main__":
    asyncio.run(main())
