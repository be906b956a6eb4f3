"""The bucketed static-shape decode step on CPU (issue 20): does ``torch.compile`` per bucket pay?

``TorchEngine`` in-process on the SmolLM-135M-shaped random Llama (fp32, greedy, EOS ignored), one
engine whose runner's decode is swapped between rounds, A/B alternating in one process:

- ``today``: the fast forward over the decode working copy (``--decode-buckets auto`` on CPU);
- ``bucketed eager``: the bucketed step as is (``--decode-buckets eager``);
- ``bucketed compile``: the bucketed step compiled per bucket by inductor (``--decode-buckets compile``);
  its compilations happen in its warm-up round, timed apart (``compile_s``, per bucket).

Reported per wall second and per CPU second of the process (one compute thread by default, so the
latter follows the work done when neighbours take the cores), and whether every variant generated the
same tokens.

    python bench/decode_buckets_cpu.py --threads 1 --rounds 2 --out bench/results/decode_buckets_cpu.json

Not a test: a shared machine moves the absolute figures; read the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOADS = {"c16-32+32": (16, 32, 32), "c64-32+32": (64, 32, 32), "c16-512+128": (16, 512, 128)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--new-tokens", type=int, default=0, help="override the workloads' new tokens")
    parser.add_argument("--skip", action="append", default=[], help="a variant to leave out")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "decode_buckets_cpu.json")
    args = parser.parse_args()

    import torch

    from cpu_decode_options import _load_bench_model
    from engine_rounds import alternate, drive
    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.model.bucketed_decode import BucketedDecoder
    from server_throughput import make_prompts

    loaded, config = _load_bench_model(args.threads, "float32")

    async def go() -> dict[str, Any]:
        engine = TorchEngine(loaded, config)
        await engine.start()
        runner: Any = engine._runner
        assert runner.pool is not None
        variants: dict[str, Any] = {"today": None}
        for mode in ("eager", "compile"):
            if f"bucketed {mode}" not in args.skip:
                variants[f"bucketed {mode}"] = BucketedDecoder(
                    runner.model, runner.pool, runner.device, config.max_num_seqs, engine.max_model_len, mode
                )
        # The bucketed step reads whole blocks: fresh blocks must be cleared for every variant.
        runner.bucket_mode = "eager"

        def swap(decoder: Any) -> None:
            runner.buckets = decoder

        report: dict[str, Any] = {}
        try:
            for name in args.workload or ["c16-32+32", "c64-32+32"]:
                streams, prompt_tokens, new_tokens = WORKLOADS[name]
                new_tokens = args.new_tokens or new_tokens
                _, ids = make_prompts(MODEL_DIR, streams, prompt_tokens)
                warm_s: dict[str, float] = {}
                for variant, decoder in variants.items():
                    runner.buckets = decoder
                    start = time.perf_counter()
                    await drive(engine, ids, new_tokens, "warm")  # compiles every bucket the run meets
                    warm_s[variant] = round(time.perf_counter() - start, 1)
                rounds = await alternate(engine, variants, swap, ids, new_tokens, args.rounds)
                compiled = variants.get("bucketed compile")
                report[name] = {
                    "tok_s": rounds.tok_s,
                    "tok_per_cpu_s": rounds.tok_per_cpu_s,
                    "over_today": rounds.over("today"),
                    "cpu_over_today": rounds.cpu_over("today"),
                    "warm_round_s": warm_s,
                    "compile_s": {
                        f"{rows}x{blocks}": round(s, 1)
                        for (rows, blocks), s in (compiled.compile_seconds.items() if compiled else ())
                    },
                    "same_tokens_as_today": rounds.same_tokens_as("today"),
                }
                print(name, json.dumps(report[name]), flush=True)
        finally:
            runner.buckets = None
            await engine.stop()
        return report

    torch.set_num_threads(args.threads)
    report = {"engine": asyncio.run(go())}
    report["note"] = f"{args.threads} threads; load average at end {os.getloadavg()}"
    print(json.dumps(report, indent=1))
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
