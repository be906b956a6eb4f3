"""Does torch work on a second thread slow the engine's later decode steps? (issue 17: after a rank-64
phase, the LoRA server's base-only steps ran slower while the adapter stack was built on a worker
thread.)

Base-only decode forwards of the SmolLM-135M-shaped random Llama on the fast path, on an "engine"
thread with two torch threads: before a "builder" thread copies ``--mb`` MB of tensors (what building
the rank-64 stack did), while that thread lives on idle (a ``ThreadPoolExecutor`` worker), and after
it exits. Per phase, medians over ``--rounds`` rounds (phases interleaved): wall and process CPU ms per
forward, and the voluntary context switches of all threads per forward (``sleeps``). libgomp's threads
spin at barriers while it counts no more threads than cores, and sleep (futex) at once otherwise; a
second thread that ran a parallel op keeps its own OpenMP team alive, so every op of the engine's
steps then sleeps and wakes its worker. ``--builder-threads 1`` has the builder call
``torch.set_num_threads(1)`` first (no team). Not a test.

    python bench/lora_thread_probe.py [--rows 16] [--forwards 5] [--rounds 3] [--mb 312] \\
        [--builder-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "server"))


class _NewColumnOnly:
    def __init__(self, layers: int) -> None:
        self.layers = [self] * layers

    def update(self, keys: Any, values: Any) -> tuple[Any, Any]:
        return keys, values


def thread_sleeps() -> dict[str, int]:
    """Voluntary context switches of each thread of this process, by thread id."""
    out: dict[str, int] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    out[task.name] = int(line.split()[1])
        except OSError:
            continue
    return out


def _added(before: dict[str, int], after: dict[str, int]) -> int:
    """Switches of the threads alive at both reads (a thread that exited meanwhile counts for none)."""
    return sum(after[tid] - count for tid, count in before.items() if tid in after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--forwards", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mb", type=int, default=312)
    parser.add_argument("--builder-threads", type=int, default=0, help="0: leave the builder's count alone")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.fast_llama import FastLlama
    from server_throughput import build_model_dir

    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    # Everything torch runs on the engine thread: a team of the main thread (loading the model there)
    # would already be the second team.
    engine = ThreadPoolExecutor(1, thread_name_prefix="engine")

    def setup() -> tuple[Any, ...]:
        torch.set_num_threads(2)
        model = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32)
        fast = FastLlama(model.eval())  # type: ignore[no-untyped-call]
        x = torch.randint(5, 1900, (args.rows, 1))
        mask = torch.ones(args.rows, 1, dtype=torch.long)
        return fast, x, _NewColumnOnly(len(fast.layers)), mask, torch.zeros(args.rows, 1, dtype=torch.long)

    fast, x, cache, mask, positions = engine.submit(setup).result()

    def forwards() -> tuple[float, float, float]:
        wall, cpu, sleeps = time.perf_counter(), time.process_time(), thread_sleeps()
        with torch.inference_mode():
            for _ in range(args.forwards):
                fast(input_ids=x, attention_mask=mask, position_ids=positions, past_key_values=cache)
        n = args.forwards
        return (
            (time.perf_counter() - wall) * 1000 / n,
            (time.process_time() - cpu) * 1000 / n,
            _added(sleeps, thread_sleeps()) / n,
        )

    def build() -> int:
        if args.builder_threads:
            torch.set_num_threads(args.builder_threads)
        source = torch.randn(1024, 2048)
        blocks = [source.clone() for _ in range(max(1, args.mb * 2**20 // source.nbytes))]
        return len(blocks)

    engine.submit(forwards).result()  # warm-up
    phases: dict[str, list[tuple[float, float, float]]] = {"before": [], "builder alive": [], "after": []}
    for _ in range(args.rounds):
        phases["before"].append(engine.submit(forwards).result())
        builder = ThreadPoolExecutor(1, thread_name_prefix="builder")
        builder.submit(build).result()
        phases["builder alive"].append(engine.submit(forwards).result())
        builder.shutdown(wait=True)
        phases["after"].append(engine.submit(forwards).result())
    report: dict[str, Any] = {"rows": args.rows, "builder_threads": args.builder_threads}
    report["cpus"] = len(os.sched_getaffinity(0))
    for phase, runs in phases.items():
        report[phase] = {
            "wall_ms": round(statistics.median(r[0] for r in runs), 1),
            "cpu_ms": round(statistics.median(r[1] for r in runs), 1),
            "sleeps": round(statistics.median(r[2] for r in runs), 1),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
