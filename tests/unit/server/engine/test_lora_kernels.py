"""The fast path's LoRA kernels (``lora/fused.py``) on random tensors: per-adapter segments (the
adapter rows gathered once, a group shrink and one expand per projection into its columns) and every
adapter stacked, both equal to the eager per-projection delta ``x·Aᵀ·Bᵀ·scale`` row by row, for
adapters targeting all, some or none of a group's projections, decode and prefill row shapes."""

from __future__ import annotations

import threading

import pytest
import torch

from modelyard.server.engine.lora import fused as fused_module
from modelyard.server.engine.lora.adapter import LinearShape, LoraAdapter
from modelyard.server.engine.lora.fused import GROUPS, FusedLora, SegmentDeltas, StackedDeltas, pack_inputs
from modelyard.server.engine.lora.layers import LoraBatch, Segment

HIDDEN, KV, MLP, LAYERS = 16, 8, 24, 2
OUT = {"q_proj": HIDDEN, "k_proj": KV, "v_proj": KV, "o_proj": HIDDEN, "gate_proj": MLP,
       "up_proj": MLP, "down_proj": HIDDEN}  # fmt: skip
IN = {name: MLP if name == "down_proj" else HIDDEN for name in OUT}


def _name(layer: int, target: str) -> str:
    part = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
    return f"model.layers.{layer}.{part}.{target}"


SHAPES = {_name(i, t): LinearShape(IN[t], OUT[t]) for i in range(LAYERS) for t in OUT}


def _adapter(name: str, rank: int, scale: float, targets: list[str], seed: int) -> LoraAdapter:
    gen = torch.Generator().manual_seed(seed)
    weights = {
        _name(i, t): (torch.randn(rank, IN[t], generator=gen), torch.randn(OUT[t], rank, generator=gen))
        for i in range(LAYERS)
        for t in targets
    }
    return pack_inputs(LoraAdapter(name, "/nowhere", rank, scale, weights))


ADAPTERS = [
    _adapter("all", 4, 0.5, list(OUT), 1),
    _adapter("qv", 2, 2.0, ["q_proj", "v_proj"], 2),
    _adapter("up-down", 3, 1.5, ["up_proj", "down_proj"], 3),
]


def _expected(
    layer: int,
    group: int,
    x: torch.Tensor,
    rows_of: dict[int, list[int]],
    query: int,
    adapters: list[LoraAdapter] = ADAPTERS,
) -> torch.Tensor:
    """The eager per-projection deltas (``LoraLinear``'s sum), side by side as the merged output."""
    targets = GROUPS[group]
    width = sum(OUT[t] for t in targets)
    out = torch.zeros(x.shape[0] // query, query, width)
    view = x.view(-1, query, x.shape[-1])
    for slot, rows in rows_of.items():
        adapter = adapters[slot]
        offset = 0
        for target in targets:
            pair = adapter.weights.get(_name(layer, target))
            if pair is not None:
                a, b = pair
                for row in rows:
                    out[row, :, offset : offset + OUT[target]] += (view[row] @ a.T @ b.T) * adapter.scale
            offset += OUT[target]
    return out.view(-1, width)


@pytest.mark.parametrize("kernel", ["segments", "stacked-small", "stacked-heavy", "stacked-heavy-no-onednn"])
@pytest.mark.parametrize("query", [1, 3])
@pytest.mark.parametrize(
    "rows_of",
    [
        {0: [0, 3, 5], 1: [1, 6], 2: [4]},  # three adapters and base rows (2, 7)
        {0: list(range(8))},  # one adapter holds every row
        {1: [2, 7], 2: [0]},  # adapters that leave projections of a group untouched
    ],
)
def test_kernels_equal_the_per_projection_deltas(
    kernel: str, query: int, rows_of: dict[int, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small stacks (the loaded ranks under STACKED_MAX_RANKS) are plain tensors; rank-heavy ones, stacked
    # for few-row forwards only, are oneDNN-prepacked where torch has oneDNN.
    stacked = kernel.startswith("stacked")
    monkeypatch.setattr(fused_module, "STACKED_MAX_RANKS", 10**6 if kernel == "stacked-small" else 0)
    monkeypatch.setattr(fused_module, "STACKED_MAX_TOKENS", 10**6 if stacked else 0)
    if kernel == "stacked-heavy-no-onednn":
        monkeypatch.setattr(fused_module, "_can_pack", lambda like: False)
    batch = LoraBatch()
    fused = FusedLora(batch, SHAPES, len(ADAPTERS))
    for slot, adapter in enumerate(ADAPTERS):
        fused.fill(slot, adapter)
    segments = tuple(
        Segment(slot, torch.tensor(rows), ADAPTERS[slot].scale, whole=len(rows) == 8)
        for slot, rows in rows_of.items()
    )
    batch.set(segments)
    deltas = fused.active(8, query)
    expected_kind = StackedDeltas if stacked and len(segments) > 1 else SegmentDeltas
    assert isinstance(deltas, expected_kind)
    if isinstance(deltas, StackedDeltas):
        assert deltas.stack.packed == (kernel == "stacked-heavy")
    torch.manual_seed(0)
    for layer in range(LAYERS):
        for group, targets in enumerate(GROUPS):
            x = torch.randn(8 * query, IN[targets[0]])
            base = torch.randn(8 * query, sum(OUT[t] for t in targets))
            out = base.clone()
            deltas.add(layer, group, x, out, query)
            torch.testing.assert_close(out - base, _expected(layer, group, x, rows_of, query))


def test_a_group_shrink_reads_the_adapters_a_in_place() -> None:
    """``pack_inputs`` lays a layer's q/k/v A back to back: the fused pair keeps no copy of them."""
    fused = FusedLora(LoraBatch(), SHAPES, 1)
    fused.fill(0, ADAPTERS[0])
    pair = fused._slot_pairs(0)[0][0]
    assert pair is not None
    q_a = ADAPTERS[0].weights[_name(0, "q_proj")][0]
    assert pair.a.untyped_storage().data_ptr() == q_a.untyped_storage().data_ptr()
    assert pair.parts[0].b is ADAPTERS[0].weights[_name(0, "q_proj")][1]
    # Not laid out back to back (an adapter as read, unpacked): the shrink gets its own copy, same values.
    loose = LoraAdapter(
        "loose", "/nowhere", 4, 0.5, {k: (a.clone(), b) for k, (a, b) in ADAPTERS[0].weights.items()}
    )
    fused.fill(0, loose)
    copied = fused._slot_pairs(0)[0][0]
    assert copied is not None
    torch.testing.assert_close(copied.a, pair.a)


def test_a_rank_heavy_stack_is_built_layer_by_layer_and_restarted_when_a_slot_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past ``STACKED_MAX_RANKS``, a small forward takes segments while the engine thread builds the
    stack a few layers per forward (no worker thread), then the stack; refilling a slot restarts the
    build for the new adapters."""
    monkeypatch.setattr(fused_module, "STACKED_MAX_RANKS", 0)
    monkeypatch.setattr(fused_module, "STACKED_MAX_TOKENS", 8)
    monkeypatch.setattr(fused_module, "STACK_BYTES_PER_STEP", 1)  # one layer per forward
    threads = threading.active_count()
    batch = LoraBatch()
    fused = FusedLora(batch, SHAPES, len(ADAPTERS))
    for slot, adapter in enumerate(ADAPTERS[:2]):
        fused.fill(slot, adapter)
    batch.set((Segment(0, torch.tensor([0, 2]), 0.5, False), Segment(1, torch.tensor([1]), 2.0, False)))

    assert isinstance(fused.active(8, 1), SegmentDeltas)  # layer 0 of 2 built
    assert isinstance(fused.active(2, 8), SegmentDeltas)  # 16 token rows: over the bound, no build
    fused.fill(1, ADAPTERS[2])  # the build so far is for the old slot 1
    assert isinstance(fused.active(8, 1), SegmentDeltas)  # restarted: layer 0 of the new slots
    deltas = fused.active(8, 1)  # layer 1: complete
    assert isinstance(deltas, StackedDeltas)
    assert deltas.stack.slots == (0, 1)
    assert threading.active_count() == threads
    x = torch.randn(8, HIDDEN)
    out = torch.zeros(8, HIDDEN + 2 * KV)
    deltas.add(1, 0, x, out, 1)
    expected = _expected(1, 0, x, {0: [0, 2], 1: [1]}, 1, [ADAPTERS[0], ADAPTERS[2]])
    torch.testing.assert_close(out, expected.view(8, -1))
