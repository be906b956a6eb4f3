"""LoRA kernel choices on CPU (issue 17, "measure before you pick"), one decode forward of the
SmolLM-135M-shaped random Llama, rows from four adapters round-robin (or all base rows).

The fast Llama forward the engine runs on CPU (``engine/fast_llama.py``: merged QKV and gate/up,
prepacked linears) with the adapters' deltas added per projection group (``engine/lora/fused.py``):

- ``fast base``: no adapters (the floor);
- ``fast segments``: ours: the adapter rows gathered once per group sorted by adapter, per adapter
  one shrink ``x·A`` (the group's A concatenated) and one expand per projection into its columns of
  the merged output (``addmm_``, the scale as alpha), one scatter-add back;
- ``fast stacked``: every loaded adapter side by side, all rows, other adapters' columns masked, one
  expand per projection over all slots;
- ``fast grouped bmm``: as segments, but the shrink and the expands as ``bmm``/``baddbmm_`` over the
  adapters (equal segments of one shape; stacked copies of the slots' weights);
- ``before segments`` / ``before stacked`` (``--before REV``): the same kernels of ``fused.py`` at git
  revision REV (one block-diagonal B per group, two thirds zeros for q/k/v), for an A/B in one run.

With ``--eager``, transformers' modules too: ``base``, ``segments`` (``engine/lora/layers.py``: per
adapter gather, two small matmuls, scatter-add), ``bgmv`` (Punica/S-LoRA's batched gather matmul in
plain torch: every row gathers its adapter's A and B, two ``bmm``) and ``peft`` (PEFT's mixed-batch
forward). Every case's logits are checked against PEFT's. The fast forward needs a cache: a one-column
one (each row attends to its new token only), the same work as ``use_cache=False``.

Medians of ``--repeats`` forwards per case, cases interleaved so a shared machine slows all alike,
in wall ms and in this process's CPU ms; then the bytes one adapter takes at each rank, eager and
fused. Not a test.

    python bench/lora_kernels.py [--threads 1] [--repeats 15] [--rows 4 16 64] [--before HEAD~1]\
        [--eager] [--out bench/results/lora_kernels.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "server"))
FUSED = "server/modelyard/server/engine/lora/fused.py"


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


class GroupedDeltas:
    """The grouped-bmm lever: adapter rows gathered once sorted by adapter (equal segments), shrink
    and expands as ``bmm`` over the adapters, from stacked copies of the slots' pairs."""

    def __init__(self, segments: Any, slot_pairs: Callable[[int], Any], query: int) -> None:
        import torch

        self.count = len(segments)
        self.index = torch.cat([seg.rows for seg in segments])
        per_seg = [slot_pairs(seg.slot) for seg in segments]
        self.layers: list[list[Any]] = []
        for layer in range(len(per_seg[0])):
            groups: list[Any] = []
            for group in range(len(per_seg[0][layer])):
                pairs = [p[layer][group] for p in per_seg]
                if any(p is None for p in pairs):
                    groups.append(None)
                    continue
                a = torch.stack([p.a for p in pairs]).transpose(1, 2)  # [k, in, Σr]
                parts = [
                    (part, torch.stack([p.parts[i].b * p.scale for p in pairs]).transpose(1, 2))
                    for i, part in enumerate(pairs[0].parts)
                ]
                groups.append((a, parts, pairs[0].full))
            self.layers.append(groups)

    def add(self, layer: int, group: int, x: Any, out: Any, query: int) -> None:
        entry = self.layers[layer][group]
        if entry is None:
            return
        a, parts, full = entry
        gathered = x.index_select(0, self.index).view(self.count, -1, x.shape[-1])
        t = gathered.bmm(a)
        delta = (out.new_empty if full else out.new_zeros)(self.count, gathered.shape[1], out.shape[-1])
        for part, b in parts:
            delta[:, :, part.out_start : part.out_end].baddbmm_(
                t[:, :, part.col_start : part.col_end], b, beta=0.0 if full else 1.0
            )
        out.index_add_(0, self.index, delta.view(-1, out.shape[-1]))


class _NewColumnOnly:
    """A cache for the fast forward without history: ``update`` hands back the new keys and values."""

    def __init__(self, layers: int) -> None:
        self.layers = [self] * layers

    def update(self, keys: Any, values: Any) -> tuple[Any, Any]:
        return keys, values


def _before_module(rev: str) -> ModuleType:
    """``fused.py`` as it was at git revision ``rev``, imported beside the current one."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{FUSED}"], cwd=HERE.parent, check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="fused-before-")) / "fused_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fused_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fused_before"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _storage_bytes(tensors: list[Any], exclude: set[int]) -> int:
    """Bytes of the distinct storages under ``tensors``, less those in ``exclude`` (data pointers)."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _pair_tensors(pairs: Any) -> list[Any]:
    out = []
    for layer in pairs:
        for pair in layer:
            if pair is None:
                continue
            out.append(pair.a)
            out.extend(part.b for part in getattr(pair, "parts", ()))
            if hasattr(pair, "b"):
                out.append(pair.b)
    return out


def _measure(
    rows: int,
    names: list[str],
    ids: dict[str, int],
    manager: Any,
    models: dict[str, Any],
    before: ModuleType | None,
    eager: bool,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """Median wall and CPU ms per forward of each case for ``rows`` decode rows, four adapters."""
    import torch

    from modelyard.server.engine.lora.fused import SegmentDeltas, StackedDeltas, lora_of
    from modelyard.server.engine.lora.layers import LoraLinear

    ours, fast, peft = models["ours"], models["fast"], models["peft"]
    row_names = [names[i % 4] for i in range(rows)]
    manager.prepare([SimpleNamespace(lora_id=ids[n]) for n in row_names])
    segments = manager._batch.segments
    fused = lora_of(ours)
    assert fused is not None
    loaded = [slot for slot, a in enumerate(fused._adapters) if a is not None]
    x = torch.randint(5, 1900, (rows, 1))
    cache = _NewColumnOnly(len(fast.layers))
    mask, positions = torch.ones(rows, 1, dtype=torch.long), torch.zeros(rows, 1, dtype=torch.long)

    def run_fast(active: Callable[[int, int], Any]) -> Any:
        manager._batch.set(segments)
        fused.active = active  # type: ignore[method-assign]
        return fast(input_ids=x, attention_mask=mask, position_ids=positions, past_key_values=cache).logits

    stack = fused._build_stack(loaded)
    grouped = GroupedDeltas(segments, fused._slot_pairs, 1)
    cases: dict[str, Callable[[], Any]] = {
        "fast base": lambda: run_fast(lambda r, q: None),
        "fast segments": lambda: run_fast(
            lambda r, q: SegmentDeltas(tuple((s, fused._slot_pairs(s.slot)) for s in segments), q)
        ),
        "fast stacked": lambda: run_fast(lambda r, q: StackedDeltas(stack, segments, r, q)),
        "fast grouped bmm": lambda: run_fast(lambda r, q: grouped),
    }
    if before is not None:
        old = before.FusedLora(manager._batch, manager.shapes, len(fused._adapters))
        for slot, adapter in enumerate(fused._adapters):
            old.fill(slot, adapter)
        old_stack = old._build_stack(loaded)
        # Older revisions' SegmentDeltas took no query argument.
        takes_query = "query" in inspect.signature(before.SegmentDeltas).parameters
        cases["before segments"] = lambda: run_fast(
            lambda r, q: before.SegmentDeltas(
                tuple((s, old._slot_pairs(s.slot)) for s in segments), *([q] if takes_query else [])
            )
        )
        cases["before stacked"] = lambda: run_fast(
            lambda r, q: before.StackedDeltas(old_stack, segments, r, q)
        )
    if eager:
        layers = list(manager._layers.values())
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

        def run_ours(forwards: dict[int, Any]) -> Any:
            for layer in layers:
                layer.forward = forwards[id(layer)]
            manager._batch.set(segments)
            return ours(input_ids=x, use_cache=False).logits

        cases["base"] = lambda: models["base"](input_ids=x, use_cache=False).logits
        cases["segments"] = lambda: run_ours(segment_forwards)
        cases["bgmv"] = lambda: run_ours(gather_forwards)
        cases["peft"] = lambda: peft(input_ids=x, use_cache=False, adapter_names=row_names).logits
    with torch.inference_mode():
        ref = peft(input_ids=x, use_cache=False, adapter_names=row_names).logits
        for name, fn in cases.items():
            if name not in ("base", "fast base", "peft"):
                diff = float((fn() - ref).abs().max())
                assert diff < 1e-3, (name, diff)
        wall: dict[str, list[float]] = {name: [] for name in cases}
        cpu: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(repeats):
            for name, fn in cases.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append(time.process_time() - start_cpu)
                wall[name].append(time.perf_counter() - start)
    return {
        "ms": {name: round(statistics.median(t) * 1000, 2) for name, t in wall.items()},
        "cpu_ms": {name: round(statistics.median(t) * 1000, 2) for name, t in cpu.items()},
    }


def _memory(model: Any, manager: Any, before: ModuleType | None) -> dict[str, int]:
    """Bytes per adapter in a slot: its own tensors (the eager path's), and what the fast path adds."""
    from modelyard.server.engine.lora.fused import lora_of

    fused = lora_of(model)
    assert fused is not None
    slot = next(i for i, a in enumerate(fused._adapters) if a is not None)
    adapter = fused._adapters[slot]
    own = [t for pair in adapter.weights.values() for t in pair]
    own_ptrs = {t.untyped_storage().data_ptr() for t in own}
    out = {
        "adapter": _storage_bytes(own, set()),
        "fused extra": _storage_bytes(_pair_tensors(fused._slot_pairs(slot)), own_ptrs),
    }
    loaded = [i for i, a in enumerate(fused._adapters) if a is not None]
    # The stack of every loaded adapter (oneDNN-packed on CPU: no storage to share, count elements).
    stack = _pair_tensors(fused._build_stack(loaded).pairs)
    out["stack of all slots"] = sum(t.numel() * t.element_size() for t in stack)
    if before is not None:
        old = before.FusedLora(manager._batch, manager.shapes, len(fused._adapters))
        old.fill(slot, adapter)
        out["before fused extra"] = _storage_bytes(_pair_tensors(old._slot_pairs(slot)), own_ptrs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--before", help="git revision whose fused.py kernels run beside ours")
    parser.add_argument("--eager", action="store_true", help="transformers' modules' cases too")
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
    before = _before_module(args.before) if args.before else None
    report: dict[str, Any] = {
        "threads": args.threads,
        "repeats": args.repeats,
        "before": args.before,
        "cases": [],
        "adapter_bytes": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    for rank in args.ranks:
        names = [f"r{rank}-{i}" for i in range(4)]
        paths = {
            n: make_adapter(MODEL_DIR, tmp / n, r=rank, alpha=2 * rank, seed=i) for i, n in enumerate(names)
        }
        ours = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
        manager = LoraManager(ours, LoraLimits(4, rank, 4), torch.device("cpu"), torch.float32)
        models = {"ours": ours, "fast": FastLlama(ours)}  # the fast path reads the fused adapters
        if args.eager:
            models["base"] = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32).eval()
        ids = {}
        for name, path in paths.items():
            ids[name] = manager.register(manager.read(name, str(path)))
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), dtype=torch.float32),
            str(paths[names[0]]),
            adapter_name=names[0],
        )
        for name in names[1:]:
            peft.load_adapter(str(paths[name]), adapter_name=name)
        models["peft"] = peft.eval()
        for rows in args.rows:
            measured = _measure(rows, names, ids, manager, models, before, args.eager, args.repeats)
            case = {"rank": rank, "rows": rows, **measured}
            report["cases"].append(case)
            print(json.dumps(case), flush=True)
        report["adapter_bytes"][str(rank)] = _memory(ours, manager, before)
        print(json.dumps({rank: report["adapter_bytes"][str(rank)]}), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
