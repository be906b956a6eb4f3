"""CPU options for the engine (issue 10, "measure and keep what wins"): dtype, ``torch.compile`` and
how the output projection is computed.

``--part engine``: the in-process engine (``TorchEngine``, no HTTP) on the SmolLM-135M-shaped random
Llama, 16 streams of 32+32 tokens (greedy, EOS ignored), ``--threads`` compute threads, each option in a
fresh subprocess so one's compiled code or thread pool cannot help another, alternating A/B/A/B so a
shared machine slows all alike. ``--part head``: the output projection alone (49,152 x 576 fp32), one
BLAS call over the whole matrix vs vocabulary slices of several sizes and oneDNN's product over a prepacked
weight (``engine/model/lm_head.py``), at 16 and
64 rows, interleaved, medians; then the engine with each projection, alternating in one process. Not
a test.

    python bench/cpu_decode_options.py [--rounds 2] [--threads 1] [--out bench/results/cpu_options.json]
    python bench/cpu_decode_options.py --part head --threads 2 --out bench/results/cpu_output_projection.json
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
OPTIONS: dict[str, dict[str, Any]] = {
    "float32": {"dtype": "float32"},  # the default: output projection in slices
    "bfloat16": {"dtype": "bfloat16"},
    "float32+compile": {"dtype": "float32", "compile": True},
}


def _head_runs(weight: Any, hidden: Any) -> dict[str, Any]:
    """The output projection of ``hidden`` by ``weight``: one call, and vocabulary slices of each size."""
    import torch

    def sliced(size: int) -> Any:
        parts = list(weight.split(size))

        def run() -> torch.Tensor:
            out = hidden.new_empty((hidden.shape[0], weight.shape[0]))
            for w, o in zip(parts, out.split(size, dim=1), strict=True):
                torch.mm(hidden, w.t(), out=o)
            return out

        return run

    packed = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    runs: dict[str, Any] = {"whole": lambda: torch.nn.functional.linear(hidden, weight)}
    runs.update({f"slices of {n}": sliced(n) for n in (512, 1024, 2048, 4096)})
    linear_pointwise = torch.ops.mkldnn._linear_pointwise
    runs["oneDNN prepacked"] = lambda: linear_pointwise(hidden, packed, None, "none", [], "")
    return runs


def head_part(threads: int, repeats: int) -> dict[str, Any]:
    import statistics
    import time

    import torch

    torch.set_num_threads(threads)
    weight = torch.randn(49152, 576) * 0.02
    report: dict[str, Any] = {}
    for rows in (16, 64):
        fns = _head_runs(weight, torch.randn(rows, 576))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()}
        report[f"{rows} rows"] = {
            "ms": ms,
            "over_whole": {k: round(v / ms["whole"], 2) for k, v in ms.items()},
            "whole_GB_s": round(weight.numel() * 4 / (ms["whole"] / 1e3) / 1e9, 1),
        }
    return report


def _load_bench_model(threads: int, dtype: str) -> tuple[Any, Any]:
    """The SmolLM-135M-shaped bench model (built on first use) loaded for the engine on ``threads``
    CPU threads: ``(LoadedModel, EngineConfig)``."""
    import torch

    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine import EngineConfig
    from modelyard.server.engine.model.loader import load_model
    from server_throughput import build_model_dir

    torch.set_num_threads(threads)
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    config = EngineConfig(model=str(MODEL_DIR), device="cpu", dtype=dtype, max_model_len=1024)
    return load_model(config), config


def head_engine_part(threads: int, rounds: int) -> dict[str, Any]:
    """The engine in-process at 16 and 64 streams (32+32), its output projection swapped between the
    sliced one it loads with and a whole ``Linear`` on the same weight, alternating in one process (a
    fresh process per option adds more noise than the difference)."""
    import statistics

    import torch

    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.engine import TorchEngine
    from server_throughput import make_prompts, run_engine

    loaded, config = _load_bench_model(threads, "float32")
    from modelyard.server.engine.model.lm_head import SlicedLMHead

    packed = loaded.model.get_output_embeddings()
    whole = torch.nn.Linear(packed.in_features, packed.out_features, bias=False)
    whole.weight = packed.weight
    heads = {"packed": packed, "slices": SlicedLMHead(whole), "whole": whole}

    async def go() -> dict[str, Any]:
        engine = TorchEngine(loaded, config)
        await engine.start()
        report: dict[str, Any] = {}
        try:
            for streams in (16, 64):
                _, ids = make_prompts(MODEL_DIR, streams, 32)
                await run_engine(engine, ids, 4, "warm")
                tok_s: dict[str, list[float]] = {name: [] for name in heads}
                for _ in range(rounds):
                    for name, head in heads.items():
                        loaded.model.set_output_embeddings(head)
                        tok_s[name].append(
                            (await run_engine(engine, ids, 32, name)).summary()["output_tok_s"]
                        )
                medians = {k: statistics.median(v) for k, v in tok_s.items()}
                report[f"c{streams} 32+32"] = {
                    "tok_s": tok_s,
                    "median": medians,
                    "slices_over_whole": round(medians["slices"] / medians["whole"], 3),
                    "packed_over_slices": round(medians["packed"] / medians["slices"], 3),
                }
                print(f"c={streams}: {report[f'c{streams} 32+32']}", flush=True)
        finally:
            loaded.model.set_output_embeddings(packed)
            await engine.stop()
        return report

    return asyncio.run(go())


def child(option: str, streams: int, prompt_tokens: int, new_tokens: int, threads: int) -> dict[str, Any]:
    import torch

    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.engine import TorchEngine
    from server_throughput import make_prompts, run_engine

    spec = OPTIONS[option]
    loaded, config = _load_bench_model(threads, spec["dtype"])
    if spec.get("compile"):
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
    parser.add_argument("--part", choices=("engine", "head"), default="engine")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cpu_decode_options.json")
    parser.add_argument("--_child", dest="child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.streams, 32, 32, args.threads)))
        return
    if args.part == "head":
        head = {"note": f"{args.threads} threads; load average at end {os.getloadavg()}"}
        head["projection alone"] = head_part(args.threads, 15 * args.rounds)
        head["engine"] = head_engine_part(args.threads, 3 * args.rounds)
        print(json.dumps(head, indent=1))
        args.out.parent.mkdir(exist_ok=True)
        args.out.write_text(json.dumps(head, indent=1))
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    runs: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for option in args.options.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--_child",
                    option,
                    "--streams",
                    str(args.streams),
                    "--threads",
                    str(args.threads),
                ],
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
        "note": f"load average at end {os.getloadavg()}; c={args.streams}, 32+32, "
        f"{args.threads} threads, in-process",
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
