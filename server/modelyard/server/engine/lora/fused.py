"""The adapters' deltas shaped for the fast decode path (``engine/fast_llama.py``).

The fast path computes q/k/v as one matmul and gate/up as another, so it adds the adapters' deltas per
*group* of projections that read one input: q/k/v, o, gate/up, down. Per device slot and layer, a
group's adapter is one ``GroupPair``: the A of the projections it targets concatenated along the rank
dim (``[Σr, in]``, one "shrink" matmul for the group), and per targeted projection its own B, which
"expands" its rank columns straight into that projection's columns of the merged output
(``addmm_`` on a column slice, the scale as the GEMM's alpha). A projection the adapter does not
target costs nothing; no B multiplies zeros, and no B is copied.

Two kernels add the pairs' deltas (measured in ``bench/lora_kernels.py``, table in docs/lora.md):
``StackedDeltas`` (all loaded adapters side by side, all rows, other adapters' columns masked) while
the loaded ranks add up to little, or at any rank for forwards of few token rows (decode steps; such a
rank-heavy stack is oneDNN-prepacked), else ``SegmentDeltas`` (the adapter rows gathered once per group,
sorted by adapter; per adapter a shrink and its expands on its slice; one scatter-add back). A
forward of base rows only gets no deltas at all.

The pairs (and the stack) are built from the adapters' own tensors the first time a forward needs them
after a slot was filled, and dropped when a slot is refilled; only the fast path pays for them. A
group's A is a view, not a copy, where the adapter's A tensors already lie back to back in memory
(``pack_inputs`` lays them out so when the adapter is read). The wrapped ``LoraLinear`` projections
(the eager path) read the per-projection tensors.

``FusedLora.attach(model)`` hangs this object on the HF model (``LORA_ATTRIBUTE``); the fast path reads
it there at every forward (``lora_of``), so it serves adapter rows whichever was built first.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from modelyard.server.engine.lora.adapter import LinearShape, LoraAdapter
from modelyard.server.engine.lora.layers import LoraBatch, Segment

# Projections that read the same input, in the order the fast path concatenates their outputs.
GROUPS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "k_proj", "v_proj"),
    ("o_proj",),
    ("gate_proj", "up_proj"),
    ("down_proj",),
)
QKV, ATTN_OUT, GATE_UP, DOWN = range(len(GROUPS))
LORA_ATTRIBUTE = "modelyard_lora"
LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True, slots=True)
class Part:
    """One targeted projection of a group: ``out[:, out_start:out_end] += t[:, cols] @ b.T * scale``,
    where ``t = x @ a.T`` is the group's shrink."""

    target: int  # its index in the group
    out_start: int
    out_end: int
    col_start: int
    col_end: int
    b: torch.Tensor  # [out, r]: the adapter's own B (the stack's: several slots' side by side, scaled)


@dataclass(frozen=True, slots=True)
class GroupPair:
    a: torch.Tensor  # [Σ rank of the targeted projections, in]
    parts: tuple[Part, ...]
    scale: float
    full: bool  # the parts cover every column of the group's output


# Per layer, per group: the slot's pair, or None where its adapter targets none of the group.
SlotPairs = list[list[GroupPair | None]]


class Deltas(Protocol):
    """One forward's adapter deltas, added group by group as the fast path computes the projections."""

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        """``out += delta(x)`` on the adapters' rows, in place. ``x`` is ``[rows * query, in]`` and
        ``out`` ``[rows * query, out]``; segments index the rows of their ``[rows, query, ...]`` views,
        so prefill chunks and decode steps take the same path."""


def _expand(pair: GroupPair, t: torch.Tensor, out: torch.Tensor, beta: float) -> None:
    for part in pair.parts:
        out[:, part.out_start : part.out_end].addmm_(
            t[:, part.col_start : part.col_end], part.b.t(), beta=beta, alpha=pair.scale
        )


class SegmentDeltas:
    """The adapter rows sorted by adapter: one gather per group, then per adapter one shrink on its
    slice and one expand per targeted projection, then one scatter-add back (an adapter holding every
    row needs neither: its expands add into the output itself)."""

    def __init__(self, segments: tuple[tuple[Segment, SlotPairs], ...], query: int) -> None:
        self.segments = segments
        self.bounds: list[tuple[int, int]] = []
        self.index: torch.Tensor | None = None
        if len(segments) == 1 and segments[0][0].whole:
            return
        rows = torch.cat([seg.rows for seg, _ in segments])
        if query > 1:  # token rows of the [rows * query, ...] views
            rows = (rows[:, None] * query + torch.arange(query, device=rows.device)).reshape(-1)
        self.index = rows
        start = 0
        for seg, _ in segments:
            end = start + seg.rows.numel() * query
            self.bounds.append((start, end))
            start = end

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        if self.index is None:
            pair = self.segments[0][1][layer][group]
            if pair is not None:
                _expand(pair, x.mm(pair.a.t()), out, 1.0)
            return
        pairs = [pairs[layer][group] for _, pairs in self.segments]
        if all(pair is None for pair in pairs):
            return
        gathered = x.index_select(0, self.index)
        # Every row's columns written by its adapter's expands: no need to zero the buffer first.
        full = all(pair is not None and pair.full for pair in pairs)
        delta = (
            out.new_empty(gathered.shape[0], out.shape[-1])
            if full
            else out.new_zeros(gathered.shape[0], out.shape[-1])
        )
        for pair, (start, end) in zip(pairs, self.bounds, strict=True):
            if pair is not None:
                _expand(pair, gathered[start:end].mm(pair.a.t()), delta[start:end], 0.0 if full else 1.0)
        out.index_add_(0, self.index, delta)


class StackedDeltas:
    """Every slot's pairs side by side: ``x·A_all`` for all rows, zero the columns of other adapters
    than the row's own, then per projection one expand over all slots' columns (1 + 1 + projections
    ops per group, however many adapters). It computes every row against every loaded adapter, so it
    is only chosen while their ranks add up to little (``STACKED_MAX_RANKS``) or the forward has few token
    rows (``STACKED_MAX_TOKENS``)."""

    def __init__(self, stack: Stack, segments: tuple[Segment, ...], rows: int, query: int) -> None:
        self.stack = stack
        # One row per forward row, one column per stacked slot: 1 where the row runs under that
        # slot. Each group's mask picks its columns' slots from it: a handful of ops per forward,
        # not one per segment and column range.
        own = stack.like.new_zeros(rows, len(stack.slots))
        for seg in segments:
            own[seg.rows, stack.slots.index(seg.slot)] = 1.0
        if query > 1:
            own = own.repeat_interleave(query, dim=0)
        self.masks = [
            own.index_select(1, slots) if slots is not None else None for slots in stack.column_slots
        ]

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        pair, mask = self.stack.pairs[layer][group], self.masks[group]
        if pair is None or mask is None:
            return
        if not self.stack.packed:
            _expand(pair, x.mm(pair.a.t()).mul_(mask), out, 1.0)
            return
        # oneDNN's prepacked products, the mask applied in the shrink's own kernel: with the
        # engine's threads each op is a barrier, and rank-heavy stacks are read at the pace of the
        # base weights (same packing) instead of MKL's slower small-GEMM path.
        t = torch.ops.mkldnn._linear_pointwise.binary(x, mask, pair.a, None, "mul")
        width = out.shape[-1]
        for part in pair.parts:
            cols = t if len(pair.parts) == 1 else t[:, part.col_start : part.col_end]
            target = out if part.out_end - part.out_start == width else out[:, part.out_start : part.out_end]
            target.add_(torch.ops.mkldnn._linear_pointwise(cols, part.b, None, "none", [], ""))


@dataclass(frozen=True, slots=True)
class Stack:
    """The pairs of the loaded slots side by side, per layer and group, projection-major (each
    projection's columns of all slots contiguous, so one expand covers them), with the slots' scales
    folded into the stacked B; ``columns[group][slot]`` lists a slot's column ranges."""

    slots: tuple[int, ...]
    pairs: list[list[GroupPair | None]]
    columns: list[dict[int, list[tuple[int, int]]]]
    widths: list[int]
    like: torch.Tensor
    column_slots: list[torch.Tensor | None]  # per group, each column's position in ``slots``
    packed: bool  # the pairs' A and B are oneDNN prepacked weights (CPU), not plain tensors


# Stack the loaded adapters while their ranks add up to at most this (four rank-8 adapters), or while
# a forward has at most STACKED_MAX_TOKENS token rows (decode steps: there the stack's extra
# multiply-adds cost less than per-adapter segments' op count); else per-adapter segments (prefill
# chunks). Measured: bench/lora_kernels.py, docs/lora.md.
STACKED_MAX_RANKS = 32
STACKED_MAX_TOKENS = 32
# A rank-heavy stack is built this many bytes (whole layers) per forward that would use it, on the
# engine thread: four rank-64 adapters (312 MB, ~10 MB a layer) are ready after five decode steps,
# each ~6 layers of copying and packing longer.
STACK_BYTES_PER_STEP = 64 << 20
# The row count oneDNN lays the stack's packed weights out for (fast_llama.py packs the base alike).
PACK_ROWS_HINT = 16


class FusedLora:
    """Per-slot group pairs for every decoder layer, kept in step with the manager's device slots."""

    def __init__(
        self,
        batch: LoraBatch,
        shapes: dict[str, LinearShape],
        max_loras: int,
    ) -> None:
        """``shapes``: the wrapped projections by module name."""
        self._batch = batch
        self._names = by_layer(shapes)
        self._shapes = shapes
        self._adapters: list[LoraAdapter | None] = [None] * max_loras
        self._pairs: list[SlotPairs | None] = [None] * max_loras
        self._stack: Stack | None = None
        self._build: StackBuild | None = None

    def attach(self, model: nn.Module) -> None:
        object.__setattr__(model, LORA_ATTRIBUTE, self)

    def fill(self, slot: int, adapter: LoraAdapter | None) -> None:
        self._adapters[slot] = adapter
        self._pairs[slot] = None
        self._stack = None
        self._build = None

    def active(self, rows: int, query: int) -> Deltas | None:
        """The deltas of the forward about to run over ``rows`` rows of ``query`` new tokens; None when
        every row is a base row (then the fast path does no LoRA work at all)."""
        segments = self._batch.segments
        if not segments:
            return None
        loaded = [slot for slot, adapter in enumerate(self._adapters) if adapter is not None]
        ranks = sum(adapter.rank for adapter in self._adapters if adapter is not None)
        if len(segments) > 1 and ranks <= STACKED_MAX_RANKS:
            if self._stack is None or self._stack.slots != tuple(loaded):
                self._stack = self._build_stack(loaded)
            return StackedDeltas(self._stack, segments, rows, query)
        if len(segments) > 1 and rows * query <= STACKED_MAX_TOKENS:
            stack = self._stack_in_steps(loaded)
            if stack is not None:
                return StackedDeltas(stack, segments, rows, query)
        return SegmentDeltas(tuple((seg, self._slot_pairs(seg.slot)) for seg in segments), query)

    def _build_stack(self, slots: list[int]) -> Stack:
        """The whole stack at once (small stacks: four rank-8 adapters are ~40 MB)."""
        per_slot = {slot: self._slot_pairs(slot) for slot in slots}
        build = StackBuild(slots, per_slot, self._names, self._shapes, pack=False)
        stack = None
        while stack is None:
            stack = build.advance(None)
        return stack

    def _stack_in_steps(self, loaded: list[int]) -> Stack | None:
        """The stack of the loaded slots, built a few layers per call on the engine thread; None until
        it is complete (the forward takes segments meanwhile). A rank-heavy stack is hundreds of MB
        (312 MB for four rank-64 adapters): built at once it would stall the step loop ~0.5-1.5 s at
        each change of slots. It is not built on a worker thread: any other thread that runs torch's
        parallel ops keeps a second OpenMP team alive, and libgomp then counts more threads than cores
        and stops spinning at barriers, so every op of every later step (base rows too) sleeps and
        wakes its threads (docs/lora.md, *The stack's build and the engine's threads*)."""
        if self._stack is not None and self._stack.slots == tuple(loaded):
            return self._stack
        if self._build is None or self._build.slots != tuple(loaded):
            per_slot = {slot: self._slot_pairs(slot) for slot in loaded}
            self._build = StackBuild(loaded, per_slot, self._names, self._shapes, pack=True)
        stack = self._build.advance(STACK_BYTES_PER_STEP)
        if stack is not None:
            self._stack, self._build = stack, None
        return stack

    def _slot_pairs(self, slot: int) -> SlotPairs:
        pairs = self._pairs[slot]
        if pairs is None:
            adapter = self._adapters[slot]
            if adapter is None:
                raise RuntimeError(f"LoRA slot {slot} is used by a forward but holds no adapter")
            pairs = self._pairs[slot] = [
                [self._group_pair(adapter, names, group) for group in GROUPS] for names in self._names
            ]
        return pairs

    def _group_pair(
        self, adapter: LoraAdapter, names: dict[str, str], group: tuple[str, ...]
    ) -> GroupPair | None:
        modules = [names[target] for target in group if target in names]
        if len(modules) != len(group) and any(m in adapter.weights for m in modules):
            raise RuntimeError(f"the projections {group} are only partly wrapped for LoRA")
        a_parts: list[torch.Tensor] = []
        parts: list[Part] = []
        offset = col = 0
        for target, module in enumerate(modules):
            fan_out = self._shapes[module].out_features
            pair = adapter.weights.get(module)
            if pair is not None:
                a, b = pair
                a_parts.append(a)
                parts.append(Part(target, offset, offset + fan_out, col, col + a.shape[0], b))
                col += a.shape[0]
            offset += fan_out
        if not parts:
            return None
        return GroupPair(_rows_together(a_parts), tuple(parts), adapter.scale, len(parts) == len(group))


class StackBuild:
    """A stack of the slots' pairs under construction, layer by layer (``advance``)."""

    def __init__(
        self,
        slots: list[int],
        per_slot: dict[int, SlotPairs],
        names: list[dict[str, str]],
        shapes: dict[str, LinearShape],
        pack: bool,
    ) -> None:
        """``pack``: lay the pairs out as oneDNN prepacked weights where torch can (rank-heavy stacks)."""
        self.slots = tuple(slots)
        self._per_slot = per_slot
        self._names = names
        self._shapes = shapes
        self._like = next(p.a for s in slots for layer in per_slot[s] for p in layer if p is not None)
        # One column layout per group for every layer (projection-major): a slot that targets a
        # projection in some layers only is a zero block in the others.
        self._ranks: list[list[dict[int, int]]] = []  # [group][projection] -> {slot: rank}
        for group, targets in enumerate(GROUPS):
            self._ranks.append([{} for _ in targets])
            for slot in slots:
                for layer in per_slot[slot]:
                    pair = layer[group]
                    for part in pair.parts if pair is not None else ():
                        self._ranks[group][part.target][slot] = part.col_end - part.col_start
        self._columns: list[dict[int, list[tuple[int, int]]]] = []
        self._widths: list[int] = []
        for per_target in self._ranks:
            layout: dict[int, list[tuple[int, int]]] = {}
            width = 0
            for by_slot in per_target:
                for slot, rank in by_slot.items():
                    layout.setdefault(slot, []).append((width, width + rank))
                    width += rank
            self._columns.append(layout)
            self._widths.append(width)
        # Rank-heavy stacks are oneDNN-prepacked on CPU (the base weights' format): read at the base's
        # pace, not MKL's small-GEMM path. Small stacks stay plain tensors: at four rank-8 adapters the
        # prepacked products cost more than they save (docs/lora.md, 16 rows: 1.21x base against 1.13x).
        self._packed = pack and self._like.device.type == "cpu" and _can_pack(self._like)
        self._pairs: list[list[GroupPair | None]] = []
        self.bytes = 0  # laid out so far

    def advance(self, budget: int | None) -> Stack | None:
        """Build layers until about ``budget`` bytes were laid out (None: all); the stack once done."""
        goal = None if budget is None else self.bytes + budget
        while len(self._pairs) < len(self._names) and (goal is None or self.bytes < goal):
            self._pairs.append(self._layer(len(self._pairs)))
        if len(self._pairs) < len(self._names):
            return None
        column_slots: list[torch.Tensor | None] = []
        for layout, width in zip(self._columns, self._widths, strict=True):
            if width == 0:
                column_slots.append(None)
                continue
            of_column = [0] * width
            for slot, ranges in layout.items():
                for start, end in ranges:
                    of_column[start:end] = [self.slots.index(slot)] * (end - start)
            column_slots.append(torch.tensor(of_column, dtype=torch.long, device=self._like.device))
        return Stack(
            self.slots, self._pairs, self._columns, self._widths, self._like, column_slots, self._packed
        )

    def _layer(self, index: int) -> list[GroupPair | None]:
        names, like = self._names[index], self._like
        row: list[GroupPair | None] = []
        for group, targets in enumerate(GROUPS):
            if self._widths[group] == 0:
                row.append(None)
                continue
            fan_in = self._shapes[names[targets[0]]].in_features
            a = like.new_zeros(self._widths[group], fan_in)
            parts: list[Part] = []
            offset = col = 0
            for t, target in enumerate(targets):
                fan_out = self._shapes[names[target]].out_features
                width = sum(self._ranks[group][t].values())
                if width:
                    b = like.new_zeros(fan_out, width)
                    at = 0
                    for slot, rank in self._ranks[group][t].items():
                        pair = self._per_slot[slot][index][group]
                        own = _part_of(pair, t)
                        if pair is not None and own is not None:
                            a[col + at : col + at + rank] = pair.a[own.col_start : own.col_end]
                            b[:, at : at + rank] = own.b * pair.scale
                        at += rank
                    parts.append(Part(t, offset, offset + fan_out, col, col + width, b))
                    col += width
                offset += fan_out
            pair = GroupPair(a, tuple(parts), 1.0, len(parts) == len(targets))
            self.bytes += _pair_bytes(pair)
            row.append(_packed(pair) if self._packed else pair)
        return row


def _pair_bytes(pair: GroupPair | None) -> int:
    if pair is None:
        return 0
    return pair.a.numel() * pair.a.element_size() + sum(p.b.numel() * p.b.element_size() for p in pair.parts)


def _can_pack(like: torch.Tensor) -> bool:
    try:
        torch.ops.mkldnn._reorder_linear_weight(like.new_zeros(8, 8), PACK_ROWS_HINT)
    except (RuntimeError, AttributeError):  # a torch build without oneDNN
        return False
    return True


def _packed(pair: GroupPair) -> GroupPair:
    pack = torch.ops.mkldnn._reorder_linear_weight
    parts = tuple(dataclasses.replace(part, b=pack(part.b, PACK_ROWS_HINT)) for part in pair.parts)
    return GroupPair(pack(pair.a, PACK_ROWS_HINT), parts, pair.scale, pair.full)


def _part_of(pair: GroupPair | None, target: int) -> Part | None:
    return next((part for part in pair.parts if part.target == target), None) if pair else None


def _rows_together(blocks: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(blocks)``, as a view of their memory where they already lie back to back."""
    if not _adjacent(blocks):
        return torch.cat(blocks)
    first = blocks[0]
    rows = sum(b.shape[0] for b in blocks)
    return first.as_strided((rows, first.shape[1]), (first.shape[1], 1), first.storage_offset())


def _adjacent(blocks: list[torch.Tensor]) -> bool:
    first = blocks[0]
    return all(b.is_contiguous() and b.shape[1] == first.shape[1] for b in blocks) and all(
        later.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and later.storage_offset() == earlier.storage_offset() + earlier.numel()
        for earlier, later in itertools.pairwise(blocks)
    )


def pack_inputs(adapter: LoraAdapter) -> LoraAdapter:
    """The same adapter with the A of the projections that read one input (a layer's q/k/v, its
    gate/up) back to back in one tensor, each projection's A a view of its rows: the fast path's group
    shrink then reads them in place instead of keeping a concatenated copy."""
    layers = by_layer(adapter.weights)
    weights = dict(adapter.weights)
    for names in layers:
        for group in GROUPS:
            modules = [names[t] for t in group if t in names]
            blocks = [weights[m][0] for m in modules]
            if len(modules) < 2 or _adjacent(blocks):
                continue
            packed = torch.cat(blocks)
            start = 0
            for module in modules:
                a, b = weights[module]
                weights[module] = (packed[start : start + a.shape[0]], b)
                start += a.shape[0]
    return LoraAdapter(adapter.name, adapter.path, adapter.rank, adapter.scale, weights)


def lora_of(model: nn.Module) -> FusedLora | None:
    """The fused adapters hung on ``model`` by ``FusedLora.attach`` (None: LoRA is off)."""
    fused = model.__dict__.get(LORA_ATTRIBUTE)
    return fused if isinstance(fused, FusedLora) else None


def by_layer(names: Iterable[str]) -> list[dict[str, str]]:
    """Wrapped module names per decoder layer (``...layers.<i>.<...>.<target>``): ``[{target: name}]``."""
    grouped: dict[int, dict[str, str]] = {}
    for name in names:
        match = LAYER_INDEX.search(name)
        if match is not None:
            grouped.setdefault(int(match[1]), {})[name.rsplit(".", 1)[-1]] = name
    return [grouped.get(i, {}) for i in range(max(grouped, default=-1) + 1)]
