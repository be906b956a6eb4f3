"""fp32 vs bf16 on CPU (issue 20's lower-precision option): the engine in-process with the fast decode
path on, on the SmolLM-135M-shaped bench model, 16 and 64 streams of 32+32 tokens, the two dtypes
alternating over three rounds; output tok per wall second and per CPU second of the process. Not a test.

    python bench/cpu_bf16.py [--out bench/results/cpu_bf16.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_v2_throughput import MODEL_DIR as MD
from modelyard.server.engine import EngineConfig
from modelyard.server.engine.engine import TorchEngine
from modelyard.server.engine.model.loader import load_model
from server_throughput import build_model_dir, make_prompts, run_engine


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


res: dict[str, Any] = {}


async def main() -> None:
    engines: dict[str, TorchEngine] = {}
    for dt in ("float32", "bfloat16"):
        cfg = EngineConfig(model=str(MD), device="cpu", dtype=dt, max_model_len=1024, fast_decode="on")
        e = TorchEngine(load_model(cfg), cfg)
        await e.start()
        engines[dt] = e
    for streams in (16, 64):
        _, ids = make_prompts(MD, streams, 32)
        for e in engines.values():
            await run_engine(e, ids, 4, "w")
        toks: dict[str, list[tuple[float, float]]] = {}
        for _round in range(3):
            for dt, e in engines.items():
                c0 = cpu()
                out = await run_engine(e, ids, 32, dt)
                s = out.summary()
                toks.setdefault(dt, []).append((s["output_tok_s"], s["output_tokens"] / (cpu() - c0)))
        res[f"c{streams}"] = toks
        print(streams, toks, flush=True)
    for e in engines.values():
        await e.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (MD / "config.json").exists():
        build_model_dir(MD)
    asyncio.run(main())
    print(json.dumps(res))
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))
