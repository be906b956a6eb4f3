"""LoRA kernel choices on CPU (issue 17, "measure before you pick"), one decode forward of the
SmolLM-135M-shaped random Llama, rows from four adapters round-robin (or all base rows):

- ``base``: the model without adapters (the floor);
- ``segments``: ours (``engine/lora/layers.py``): per adapter, gather its rows, two small matmuls,
  scatter-add back; base rows cost nothing;
- ``bgmv``: Punica/S-LoRA's batched gather matmul in plain torch: every row gathers its adapter's
  A and B from slot stacks padded to the largest rank, then two ``bmm`` over the whole batch;
- ``peft``: PEFT's mixed-batch forward (``model(..., adapter_names=[...])``), the reference;
- ``fast base``: the fast Llama forward the engine runs on CPU (``engine/fast_llama.py``: merged QKV
  and gate/up, prepacked linears), without adapters; with them (``engine/lora/fused.py``, deltas per
  projection group q/k/v, o, gate/up, down): ``fast segments``, per adapter one ``x·A`` and one
  block-diagonal ``B`` on its gathered rows; ``fast stacked``, every loaded adapter side by side, all
  rows, other adapters' columns zeroed. The fast forward needs a cache: a one-column one (each row
  attends to its new token only), the same work as ``use_cache=False``.

Medians of ``--repeats`` forwards per case, cases interleaved so a shared machine slows all alike;
then the bytes one adapter takes at each rank. Not a test.

    python bench/lora_kernels.py [--threads 1] [--repeats 15] [--out bench/results/lora_kernels.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _bgmv_forward(layer: Any, stacks: dict[int, Any], state: dict[str, Any]) -> Any:
    import torch

    def forward(x: Any) -> Any:
        out = layer.base(x)
        pair = stacks.get(id(layer))
        if pair is None or state.get("slots") is None:
            return out
        a_stack, b_stack = pair
        slots, scales = state["slots"], state["scales"]
        h = torch.bmm(x, a_stack.index_select(0, slots).transpose(1, 2))
        return out + torch.bmm(h, b_stack.index_select(0, slots).transpose(1, 2)) * scales[:, None, None]

    return forward


class _NewColumnOnly:
    """A cache for the fast forward without history: ``update`` hands back the new keys and values."""

    def __init__(self, layers: int) -> None:
        self.layers = [self] * layers

    def update(self, keys: Any, values: Any) -> tuple[Any, Any]:
        return keys, values


def _measure(
    rows: int,
    names: list[str],
    ids: dict[str, int],
    manager: Any,
    base: Any,
    ours: Any,
    peft: Any,
    fast: Any,
    repeats: int,
) -> dict[str, float]:
    """Median ms per forward of each case for ``rows`` decode rows, four adapters round-robin."""
    import torch

    from modelyard.server.engine.lora import fused
    from modelyard.server.engine.lora.layers import LoraLinear

    row_names = [names[i % 4] for i in range(rows)]
    manager.prepare([SimpleNamespace(lora_id=ids[n]) for n in row_names])
    segments = manager._batch.segments
    layers = list(manager._layers.values())
    # Slot stacks for the gather variant, in the slots the manager chose.
    stacks: dict[int, Any] = {}
    for layer in layers:
        pairs = layer.slots[:4]
        if all(p is not None for p in pairs):
            stacks[id(layer)] = (torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]))
    row_slot = [0] * rows
    scale_of = {}
    for seg in segments:
        scale_of[seg.slot] = seg.scale
        for r in seg.rows.tolist():
            row_slot[r] = seg.slot
    state = {"slots": torch.tensor(row_slot), "scales": torch.tensor([scale_of[s] for s in row_slot])}
    segment_forwards = {id(layer): LoraLinear.forward.__get__(layer) for layer in layers}
    gather_forwards = {id(layer): _bgmv_forward(layer, stacks, state) for layer in layers}
    x = torch.randint(5, 1900, (rows, 1))

    def run_ours(forwards: dict[int, Any]) -> Any:
        for layer in layers:
            layer.forward = forwards[id(layer)]
        manager._batch.set(segments)
        return ours(input_ids=x, use_cache=False).logits

    cache = _NewColumnOnly(len(fast.layers))
    mask, positions = torch.ones(rows, 1, dtype=torch.long), torch.zeros(rows, 1, dtype=torch.long)

    def run_fast(kernel: str | None) -> Any:
        manager._batch.set(segments if kernel else ())
        fused.STACKED_MAX_RANKS = 10**6 if kernel == "stacked" else 0
        return fast(input_ids=x, attention_mask=mask, position_ids=positions, past_key_values=cache).logits

    cases = {
        "base": lambda: base(input_ids=x, use_cache=False).logits,
        "segments": lambda: run_ours(segment_forwards),
        "bgmv": lambda: run_ours(gather_forwards),
        "peft": lambda: peft(input_ids=x, use_cache=False, adapter_names=row_names).logits,
        "fast base": lambda: run_fast(None),
        "fast segments": lambda: run_fast("segments"),
        "fast stacked": lambda: run_fast("stacked"),
    }
    with torch.inference_mode():
        ref = cases["peft"]()
        for name in ("segments", "bgmv", "fast segments", "fast stacked"):
            diff = float((cases[name]() - ref).abs().max())
            assert diff < 1e-3, (name, diff)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(t) * 1000, 2) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine_v2_throughput import MODEL_DIR
    from modelyard.server.engine.fast_llama import FastLlama
    from modelyard.server.engine.lora.manager import LoraLimits, LoraManager
    from server_throughput import build_model_dir
    from tests.fixtures.lora import make_adapter

    torch.set_num_threads(args.threads)
    if not (MODEL_DIR / "config.json").exists():
        build_model_dir(MODEL_DIR)
    report: dict[str, Any] = {
        "threads": args.threads,
        "repeats": args.repeats,
        "cases": [],
        "adapter_bytes": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    for rank in args.ranks:
        names = [f"r{rank}-{i}" for i in range(4)]
        paths = {
            n: make_adapter(MODEL_DIR, tmp / n, r=rank, alpha=2 * rank, seed=i) for i, n in enumerate(names)
        }
        base = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
        ours = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
        manager = LoraManager(ours, LoraLimits(4, rank, 4), torch.device("cpu"), torch.float32)
        fast = FastLlama(ours)  # reads the wrapped projections' base weights and the fused adapters
        ids = {}
        for name, path in paths.items():
            adapter = manager.read(name, str(path))
            report["adapter_bytes"][str(rank)] = adapter.nbytes
            ids[name] = manager.register(adapter)
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32),
            str(paths[names[0]]),
            adapter_name=names[0],
        )
        for name in names[1:]:
            peft.load_adapter(str(paths[name]), adapter_name=name)
        peft.eval()
        for rows in args.rows:
            case = {
                "rank": rank,
                "rows": rows,
                "ms": _measure(rows, names, ids, manager, base, ours, peft, fast, args.repeats),
            }
            report["cases"].append(case)
            print(json.dumps(case), flush=True)
    print(json.dumps(report["adapter_bytes"]))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
