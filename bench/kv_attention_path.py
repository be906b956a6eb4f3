"""Decode-step time of the KV layouts on the SmolLM-135M-shaped model: the old left-padded slab
(``BatchKVCache`` as on ``--ref``, default ``8f72476``, the last commit with it, loaded from git) vs
the paged pool gathered per step.

Usage: ``python bench/kv_attention_path.py`` (CPU, a few seconds per point). Both layouts run the
same model on the same rows in one process, alternating, so a shared machine slows both alike.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from modelyard.server.engine.model.paged_cache import KVPool, PagedCache, build_decode_layout, build_layout
from modelyard.server.engine.model.runner import ModelRunner
from server_throughput import SMOLLM_SHAPE

BLOCK = 16
SLAB_REF = "8f72476"  # the last commit with the slab KV cache (engine/kv_cache.py)


def old_slab_module(ref: str) -> types.ModuleType:
    """``engine/kv_cache.py`` as it is on ``ref`` (the slab layout this change replaces)."""
    source = subprocess.run(
        ["git", "show", f"{ref}:server/modelyard/server/engine/kv_cache.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType("old_kv_cache")
    exec(compile(source, "old_kv_cache.py", "exec"), module.__dict__)
    return module


def time_slab(model: LlamaForCausalLM, slab: types.ModuleType, rows: int, ctx: int, steps: int) -> float:
    cache = slab.BatchKVCache(model.config.num_hidden_layers, ctx + steps + 64)
    ids = torch.randint(3, 400, (rows, ctx))
    mask = torch.ones((rows, ctx), dtype=torch.long)
    model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True, logits_to_keep=1)
    times = []
    for step in range(steps):
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=torch.long)], dim=1)
        pos = torch.full((rows, 1), ctx + step)
        start = time.perf_counter()
        model(
            input_ids=ids[:, :1],
            attention_mask=mask,
            position_ids=pos,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_paged(model: LlamaForCausalLM, rows: int, ctx: int, steps: int, blocks: bool = True) -> float:
    per_row = -(-(ctx + steps) // BLOCK)
    pool = KVPool(model.config.num_hidden_layers, rows * per_row, BLOCK)
    # Interleave rows' blocks as a running server would after joins and leaves.
    tables = [[1 + r + rows * b for b in range(per_row)] for r in range(rows)]
    ids = torch.randint(3, 400, (rows, ctx))
    layout, mask, pos = build_layout(
        tables, [0] * rows, [ctx] * rows, BLOCK, pool.num_slots, torch.device("cpu")
    )
    model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=pos,
        past_key_values=PagedCache(pool, layout),
        use_cache=True,
        logits_to_keep=1,
    )
    times = []
    for step in range(steps):
        start = time.perf_counter()
        if blocks:
            layout, mask, pos = build_decode_layout(
                tables, [ctx + step] * rows, BLOCK, pool.num_slots, torch.device("cpu")
            )
        else:
            layout, mask, pos = build_layout(
                tables, [ctx + step] * rows, [1] * rows, BLOCK, pool.num_slots, torch.device("cpu")
            )
        model(
            input_ids=ids[:, :1],
            attention_mask=mask,
            position_ids=pos,
            past_key_values=PagedCache(pool, layout),
            use_cache=True,
            logits_to_keep=1,
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_runner_slab(model: LlamaForCausalLM, rows: int, ctx: int, steps: int) -> float:
    """The engine's CPU decode path: the pool is written every step, the history is gathered once
    into a per-group working copy and appended a column per step (``engine/model/decode_slab.py``)."""
    per_row = -(-(ctx + steps) // BLOCK)
    runner = ModelRunner(
        model, torch.device("cpu"), model.config.num_hidden_layers, BLOCK, sliding=False, decode_slab=True
    )
    runner.allocate(rows * per_row)
    tables = [[1 + r + rows * b for b in range(per_row)] for r in range(rows)]
    ids = torch.randint(3, 400, (rows, ctx)).tolist()
    runner.prefill(tables, [0] * rows, ids)
    keys = tuple(range(rows))
    times = []
    for step in range(steps):
        start = time.perf_counter()
        runner.begin_decode()
        runner.decode(tables, [ctx + step] * rows, [5] * rows, keys=keys)
        times.append(time.perf_counter() - start)
    # The first step gathers the history (what a join or leave costs); the rest append.
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default=SLAB_REF, help="git ref holding the old slab kv_cache.py")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--points", default="16x64,64x64,16x640")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM_SHAPE)).eval()
    slab = old_slab_module(args.ref)
    print(f"torch threads={torch.get_num_threads()} (machine shared with other jobs: compare ratios only)")
    with torch.inference_mode():
        for point in args.points.split(","):
            rows, ctx = (int(x) for x in point.split("x"))
            s = time_slab(model, slab, rows, ctx, args.steps)
            p = time_paged(model, rows, ctx, args.steps, blocks=True)
            t = time_paged(model, rows, ctx, args.steps, blocks=False)
            w = time_runner_slab(model, rows, ctx, args.steps)
            s2 = time_slab(model, slab, rows, ctx, args.steps)
            slab_ms = min(s, s2) * 1000
            print(
                f"rows={rows:3d} ctx={ctx:4d}  old slab {slab_ms:7.1f} ms/step  paged-blocks {p * 1000:7.1f}"
                f"  paged-tokens {t * 1000:7.1f}  pool+working copy {w * 1000:7.1f}"
                f"  ratios {p * 1000 / slab_ms:.2f} {t * 1000 / slab_ms:.2f} {w * 1000 / slab_ms:.2f}"
            )


if __name__ == "__main__":
    main()
