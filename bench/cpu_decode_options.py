"""CPU options for the engine (issue 10, "measure and keep what wins"): dtype and ``torch.compile``.

The in-process engine (``TorchEngine``, no HTTP) on the SmolLM-135M-shaped random Llama, 16 streams of
32+32 tokens (greedy, EOS ignored), one engine thread (what the engine process gets on 2 cores), each
option in a fresh subprocess so one's compiled code or thread pool cannot help another, alternating
A/B/A/B so a shared machine slows all alike. Not a test.

    python bench/cpu_decode_options.py [--rounds 2] [--out bench/results/cpu_decode_options.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OPTIONS = {
    "float32": {"dtype": "float32", "compile": False},
    "bfloat16": {"dtype": "bfloat16", "compile": False},
    "float32+compile": {"dtype": "float32", "compile": True},
}


def child(option: str, streams: int, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    import torch

    sys.path.insert(0, str(HERE))
    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine import EngineConfig, TorchEngine, load_model
    from server_throughput import build_model_dir, make_prompts, run_engine

    torch.set_num_threads(1)
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    spec = OPTIONS[option]
    config = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype=spec["dtype"], max_model_len=1024)
    loaded = load_model(config)
    if spec["compile"]:
        # dynamic: batch rows and KV length change every step; one graph family instead of one per shape.
        loaded.model.forward = torch.compile(loaded.model.forward, dynamic=True)  # type: ignore[method-assign]
    _, ids = make_prompts(MODEL_DIR, streams, prompt_tokens)

    async def go() -> dict[str, Any]:
        engine = TorchEngine(loaded, config)
        await engine.start()
        try:
            await run_engine(engine, ids, 4, "warm")  # compiles (if asked) and warms the kernels
            await run_engine(engine, ids, new_tokens, "warm2")
            return (await run_engine(engine, ids, new_tokens, "bench")).summary()
        finally:
            await engine.stop()

    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_decode_options.json")
    parser.add_argument("--_child", dest="child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.streams, 32, 32)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for option in args.options.split(","):
            out = subprocess.run(
                [sys.executable, __file__, "--_child", option, "--streams", str(args.streams)],
                env=env,
                capture_output=True,
                text=True,
            )
            if out.returncode != 0:
                runs.setdefault(option, [])
                print(f"{option}: failed: {out.stderr[-800:]}", flush=True)
                continue
            tok_s = json.loads(out.stdout.strip().splitlines()[-1])["output_tok_s"]
            runs.setdefault(option, []).append(tok_s)
            print(f"{option}: {tok_s} tok/s", flush=True)
    best = {k: max(v) for k, v in runs.items() if v}
    report = {
        "note": f"load average at end {os.getloadavg()}; c={args.streams}, 32+32, 1 thread, in-process",
        "tok_s": runs,
        "best_over_float32": {k: round(v / best["float32"], 2) for k, v in best.items()}
        if "float32" in best
        else {},
    }
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
