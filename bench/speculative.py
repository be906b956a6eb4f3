"""Speculative decoding (prompt-lookup drafts) on vs off, in-process, on SmolLM2-135M-Instruct. Not a test.

Two workloads, the engine with and without ``--speculative-config`` alternating over ``--rounds``
rounds on one loaded model (greedy, so both produce the same tokens, which is checked):
- ``rewrite``: one stream asked to copy a JSON document back (repetition-heavy: the prompt holds
  most of the answer);
- ``mixed``: 16 streams of different open questions (little to look up).

    python bench/speculative.py [--rounds 3] [--threads 2] [--json bench/results/speculative.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))

from modelyard.server.engine import EngineConfig, GenerationRequest, SamplingParams  # noqa: E402
from modelyard.server.engine.engine import TorchEngine  # noqa: E402
from modelyard.server.engine.model.loader import LoadedModel, load_model  # noqa: E402
from modelyard.server.engine.types import SpeculativeConfig  # noqa: E402
from modelyard.server.modelbuild.smollm import ensure_smollm2  # noqa: E402

DOCUMENT = {
    "service": "inventory",
    "version": "2.4.1",
    "regions": ["eu-west-1", "us-east-2", "ap-south-1"],
    "limits": {"max_items": 5000, "max_batch": 250, "timeout_ms": 1200},
    "owners": [
        {"name": "Alice Martin", "email": "alice@example.com", "role": "lead"},
        {"name": "Bruno Costa", "email": "bruno@example.com", "role": "backend"},
        {"name": "Chen Wei", "email": "chen@example.com", "role": "sre"},
    ],
    "features": {"audit_log": True, "soft_delete": False, "cache_ttl_s": 300},
}
QUESTIONS = [
    "Why is the sky blue?",
    "Give three tips for sleeping better.",
    "What does a compiler do?",
    "Describe a cat to someone who has never seen one.",
    "How do bees make honey?",
    "What is the difference between weather and climate?",
    "Suggest a name for a small bakery.",
    "Why do we have seasons?",
    "What is a prime number?",
    "How does a bicycle stay upright?",
    "Write a haiku about autumn.",
    "What causes thunder?",
    "Explain what a budget is.",
    "Why do leaves change colour?",
    "What is photosynthesis?",
    "How do airplanes fly?",
]


def chat_ids(loaded: LoadedModel, text: str) -> list[int]:
    rendered = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
    return list(loaded.tokenizer(rendered, add_special_tokens=False)["input_ids"])


async def run(
    engine: TorchEngine, prompts: list[list[int]], max_tokens: int
) -> tuple[float, list[list[int]]]:
    async def one(i: int, ids: list[int]) -> list[int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        return [
            t async for out in engine.generate(GenerationRequest(f"r{i}", ids, params)) for t in out.token_ids
        ]

    start = time.perf_counter()
    outs = list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))
    return time.perf_counter() - start, outs


async def measure(
    loaded: LoadedModel, config: EngineConfig, prompts: list[list[int]], max_tokens: int
) -> dict[str, Any]:
    engine = TorchEngine(loaded, config)
    await engine.start()
    try:
        await run(engine, prompts[:1], 4)  # warm-up
        seconds, outs = await run(engine, prompts, max_tokens)
        stats = engine.stats()
    finally:
        await engine.stop()
    tokens = sum(len(o) for o in outs)
    return {
        "tok_s": tokens / seconds,
        "tokens": tokens,
        "outputs": outs,
        "drafts": stats.spec_decode_num_drafts,
        "draft_tokens": stats.spec_decode_num_draft_tokens,
        "accepted": stats.spec_decode_num_accepted_tokens,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=4, help="num_speculative_tokens")
    parser.add_argument("--lookup-min", type=int, default=2)
    parser.add_argument("--lookup-max", type=int, default=5)
    parser.add_argument("--rewrite-tokens", type=int, default=300)
    parser.add_argument("--mixed-tokens", type=int, default=96)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = EngineConfig(model=str(ensure_smollm2()), device="cpu", max_model_len=2048, max_num_seqs=16)
    loaded = load_model(base)
    spec = SpeculativeConfig(args.k, args.lookup_min, args.lookup_max)
    text = json.dumps(DOCUMENT, indent=2)
    workloads = {
        "rewrite (1 stream)": (
            [chat_ids(loaded, f"Copy this JSON document exactly:\n{text}")],
            args.rewrite_tokens,
        ),
        "mixed (16 streams)": ([chat_ids(loaded, q) for q in QUESTIONS], args.mixed_tokens),
    }
    report: dict[str, Any] = {"config": vars(args) | {"json": None}, "workloads": {}}
    for name, (prompts, max_tokens) in workloads.items():
        figures: dict[str, list[float]] = {"off": [], "on": []}
        last: dict[str, dict[str, Any]] = {}
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                config = EngineConfig(**{**_fields(base), "speculative": spec if mode == "on" else None})
                last[mode] = await measure(loaded, config, prompts, max_tokens)
                figures[mode].append(last[mode]["tok_s"])
                print(f"  {name}, speculative {mode}: {last[mode]['tok_s']:.1f} tok/s", flush=True)
        same = last["on"]["outputs"] == last["off"]["outputs"]
        off, on = statistics.median(figures["off"]), statistics.median(figures["on"])
        accepted = last["on"]["accepted"] / max(1, last["on"]["draft_tokens"])
        print(
            f"{name}: off {off:.1f} tok/s, on {on:.1f} tok/s ({on / off:.2f}x), "
            f"acceptance {accepted:.0%}, same tokens: {same}; rounds off {figures['off']} on {figures['on']}",
            flush=True,
        )
        report["workloads"][name] = {
            "off_tok_s": figures["off"],
            "on_tok_s": figures["on"],
            "speedup_of_medians": on / off,
            "acceptance": accepted,
            "same_tokens": same,
            "tokens": last["on"]["tokens"],
        }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def _fields(config: EngineConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


if __name__ == "__main__":
    asyncio.run(main())
