"""The fast CPU decode path's levers (issue 20), each measured alone, A/B alternating in one process.

``--part linear``: one decoder layer's matrices of the SmolLM-135M shape (merged QKV 960 x 576, O 576 x
576, merged gate/up 3,072 x 576, down 576 x 1,536; x 30 layers), plain ``F.linear`` against the oneDNN
product over a weight prepacked once (``torch.ops.mkldnn._linear_pointwise``), and the merged matrices
against the separate ones, at 1 to 64 token rows; medians of interleaved repeats.

``--part engine``: ``TorchEngine`` in-process on the SmolLM-135M-shaped random Llama, greedy, EOS
ignored, the runner's forward swapped between rounds in one engine (reported per wall second and per
CPU second of the process: with one compute thread the latter barely moves when neighbours take the
cores): transformers' modules (today's
path), the lean forward with no lever, with each lever alone, and with all of them (what
``--fast-decode auto`` runs). Also checks that every variant generated exactly the same tokens.

    python bench/fast_decode_levers.py --part linear --threads 1
    python bench/fast_decode_levers.py --part engine --threads 1 --rounds 3 \
        --out bench/results/fast_decode_levers.json

Not a test: a shared machine moves the absolute figures; read the ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "c16-32+32": (16, 32, 32),
    "c64-32+32": (64, 32, 32),
    "c16-512+128": (16, 512, 128),
    "c64-512+128": (64, 512, 128),
}


def linear_part(threads: int, repeats: int) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    hidden, inter, kv, layers = 576, 1536, 192, 30
    separate = [
        (hidden, hidden),
        (kv, hidden),
        (kv, hidden),
        (hidden, hidden),
        (inter, hidden),
        (inter, hidden),
        (hidden, inter),
    ]
    merged = [(hidden + 2 * kv, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)]
    report: dict[str, Any] = {}
    for rows in (1, 2, 4, 8, 16, 64):
        xs = {hidden: torch.randn(rows, hidden), inter: torch.randn(rows, inter)}
        runs: dict[str, Any] = {}
        for name, shapes in (("separate", separate), ("merged", merged)):
            weights = [[torch.randn(*s) * 0.02 for s in shapes] for _ in range(layers)]
            packed = [[torch.ops.mkldnn._reorder_linear_weight(w, 16) for w in lw] for lw in weights]

            def plain(weights: list[list[torch.Tensor]] = weights, xs: dict[int, torch.Tensor] = xs) -> None:
                for lw in weights:
                    for w in lw:
                        F.linear(xs[w.shape[1]], w)

            def dnn(
                weights: list[list[torch.Tensor]] = weights,
                packed: list[list[torch.Tensor]] = packed,
                xs: dict[int, torch.Tensor] = xs,
            ) -> None:
                for lw, pw in zip(weights, packed, strict=True):
                    for w, p in zip(lw, pw, strict=True):
                        torch.ops.mkldnn._linear_pointwise(xs[w.shape[1]], p, None, "none", [], "")

            runs[f"{name} plain"] = plain
            runs[f"{name} packed"] = dnn
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():
            fn()
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        ms = {k: round(statistics.median(v) * 1e3, 2) for k, v in times.items()}
        base = ms["separate plain"]
        report[f"{rows} rows"] = {
            "ms": ms,
            "over_separate_plain": {k: round(v / base, 3) for k, v in ms.items()},
        }
        print(rows, report[f"{rows} rows"], flush=True)
    return report


def engine_part(
    threads: int,
    rounds_wanted: int,
    workloads: list[str],
    new_tokens_override: int = 0,
    only: tuple[str, ...] = (),
) -> dict[str, Any]:
    import torch

    from cpu_decode_options import _load_bench_model
    from engine_rounds import alternate, drive
    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.engine import TorchEngine
    from modelyard.server.engine.fast_llama import FastLlama, Levers
    from server_throughput import make_prompts

    loaded, config = _load_bench_model(threads, "float32")
    config = dataclasses.replace(config, fast_decode="off")  # the variants below are swapped in by hand
    hf = loaded.model
    none = Levers(merged=False, packed=False, grouped_attention=False)
    builders: dict[str, Any] = {
        "transformers": lambda: hf,
        "lean, no lever": lambda: FastLlama(hf, none),
        "lean + merged": lambda: FastLlama(hf, dataclasses.replace(none, merged=True)),
        "lean + packed": lambda: FastLlama(hf, dataclasses.replace(none, packed=True)),
        "lean + grouped attention": lambda: FastLlama(hf, dataclasses.replace(none, grouped_attention=True)),
        "fast (all levers)": lambda: FastLlama(hf, Levers()),
        # Each lever below measured against all the others on: an SDPA mask even where it hides nothing,
        "fast, masks always built": lambda: FastLlama(hf, Levers(skip_masks=False)),
        # and (model/runner.py) a changed decode group gathering every row from the pool again instead
        # of copying its kept rows from the last step's working copy.
        "fast, every changed group gathered": lambda: FastLlama(hf, Levers()),
        # and the rotary's sign negated in every layer, its products and the MLP gate's out of place.
        "fast, glue as before": lambda: FastLlama(hf, Levers(lean_glue=False)),
    }
    variants = {k: build() for k, build in builders.items() if not only or k in only}
    regather = variants.get("fast, every changed group gathered")
    base = "transformers" if "transformers" in variants else next(iter(variants))

    async def go() -> dict[str, Any]:
        engine = TorchEngine(loaded, config)
        await engine.start()
        runner: Any = engine._runner

        def swap(model: Any) -> None:
            runner.model = model
            runner.reuse_slabs = model is not regather

        report: dict[str, Any] = {}
        try:
            for name in workloads:
                streams, prompt_tokens, new_tokens = WORKLOADS[name]
                _, ids = make_prompts(MODEL_DIR, streams, prompt_tokens)
                for model in variants.values():
                    runner.model = model
                    await drive(engine, ids, 4, "warm")
                rounds = await alternate(
                    engine, variants, swap, ids, new_tokens_override or new_tokens, rounds_wanted
                )
                report[name] = {
                    "tok_s": rounds.tok_s,
                    "tok_per_cpu_s": rounds.tok_per_cpu_s,
                    "base": base,
                    "over_base": rounds.over(base),
                    "cpu_over_base": rounds.cpu_over(base),
                    "cpu_over_lean_no_lever": rounds.cpu_over("lean, no lever")
                    if "lean, no lever" in variants
                    else {},
                    "same_tokens_as_base": rounds.same_tokens_as(base),
                }
                print(name, json.dumps(report[name]), flush=True)
        finally:
            runner.model = hf
            await engine.stop()
        return report

    torch.set_num_threads(threads)
    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=("linear", "engine"), default="engine")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workload", action="append", choices=sorted(WORKLOADS))
    parser.add_argument("--new-tokens", type=int, default=0, help="override the workloads' new tokens")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only these variants (the first is the base of the ratios), e.g. 'fast (all levers)'",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.part == "linear":
        report = {"linear": linear_part(args.threads, 5 * args.rounds)}
    else:
        report = {
            "engine": engine_part(
                args.threads,
                args.rounds,
                args.workload or list(WORKLOADS),
                args.new_tokens,
                tuple(args.only),
            )
        }
    report["note"] = f"{args.threads} threads; load average at end {os.getloadavg()}"
    print(json.dumps(report, indent=1))
    out = args.out or HERE / "results" / f"fast_decode_{args.part}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
