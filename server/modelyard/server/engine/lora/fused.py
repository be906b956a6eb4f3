"""The adapters' deltas shaped for the fast decode path (``engine/fast_llama.py``).

The fast path computes q/k/v as one matmul and gate/up as another, so it adds the adapters' deltas per
*group* of projections that read one input: q/k/v, o, gate/up, down. Per device slot and layer, a
group's adapter is one ``(A, B)`` pair: the A of the group's projections concatenated along the rank
dim (``[Σr, in]``) and their B block-diagonal (``[Σout, Σr]``) with the adapter's scale folded in, so
one adapter's q, k and v deltas are two matmuls whose output lines up with the merged QKV columns. A
projection the adapter does not target is a zero block (adding an exact zero changes nothing).

Two kernels add the pairs' deltas (measured in ``bench/lora_kernels.py``, table in docs/lora.md):
``StackedDeltas`` (all loaded adapters side by side, 3 ops per group) while the loaded ranks add up to
little, else ``SegmentDeltas`` (per adapter, its rows gathered). A forward of base rows only gets no
deltas at all.

The pairs (and the stack) are built from the adapters' own tensors the first time a forward needs them
after a slot was filled, and dropped when a slot is refilled; only the fast path pays for them. The
wrapped ``LoraLinear`` projections (the eager path) keep reading the per-projection tensors.

``FusedLora.attach(model)`` hangs this object on the HF model (``LORA_ATTRIBUTE``); the fast path reads
it there at every forward (``lora_of``), so it serves adapter rows whichever was built first.
"""

from __future__ import annotations

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
class GroupPair:
    """``delta = (x @ a.T) @ b.T``; the scale is in ``b``."""

    a: torch.Tensor  # [Σ rank, in]
    b: torch.Tensor  # [Σ out, Σ rank], block-diagonal for a group of several projections


# Per layer, per group: the slot's pair, or None where its adapter targets none of the group.
SlotPairs = list[list[GroupPair | None]]


class Deltas(Protocol):
    """One forward's adapter deltas, added group by group as the fast path computes the projections."""

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        """``out += delta(x)`` on the adapters' rows, in place. ``x`` is ``[rows * query, in]`` and
        ``out`` ``[rows * query, out]``; segments index the rows of their ``[rows, query, ...]`` views,
        so prefill chunks and decode steps take the same path."""


class SegmentDeltas:
    """Per adapter: gather its rows, ``x·A``, ``·B``, scatter-add back (4 ops per group and adapter; an
    adapter holding every row needs no gather: 2)."""

    def __init__(self, segments: tuple[tuple[Segment, SlotPairs], ...]) -> None:
        self.segments = segments

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        for seg, pairs in self.segments:
            pair = pairs[layer][group]
            if pair is None:
                continue
            if seg.whole:
                out.addmm_(x.mm(pair.a.t()), pair.b.t())
                continue
            fan_in, fan_out = x.shape[-1], out.shape[-1]
            rows = x.view(-1, query, fan_in).index_select(0, seg.rows).view(-1, fan_in)
            delta = rows.mm(pair.a.t()).mm(pair.b.t())
            out.view(-1, query, fan_out).index_add_(0, seg.rows, delta.view(-1, query, fan_out))


class StackedDeltas:
    """Every slot's pairs side by side: ``x·A_all`` for all rows, zero the columns of other adapters
    than the row's own, ``·B_all`` (3 ops per group, however many adapters). It computes every row
    against every loaded adapter, so it is only chosen while their ranks add up to little
    (``STACKED_MAX_RANKS``)."""

    def __init__(self, stack: Stack, segments: tuple[Segment, ...], rows: int, query: int) -> None:
        self.stack = stack
        self.masks: list[torch.Tensor | None] = []
        for group, layout in enumerate(stack.layouts):
            width = stack.widths[group]
            if width == 0:
                self.masks.append(None)
                continue
            mask = stack.like.new_zeros(rows, width)
            for seg in segments:
                start, size = layout.get(seg.slot, (0, 0))
                if size:
                    mask[seg.rows, start : start + size] = 1.0
            self.masks.append(mask.repeat_interleave(query, dim=0) if query > 1 else mask)

    def add(self, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int) -> None:
        pair, mask = self.stack.pairs[layer][group], self.masks[group]
        if pair is None or mask is None:
            return
        out.addmm_(x.mm(pair.a.t()).mul_(mask), pair.b.t())


@dataclass(frozen=True, slots=True)
class Stack:
    """The pairs of the loaded slots side by side, per layer and group, and where each slot's columns
    sit: ``layouts[group][slot] = (start, width)``."""

    slots: tuple[int, ...]
    pairs: list[list[GroupPair | None]]
    layouts: list[dict[int, tuple[int, int]]]
    widths: list[int]
    like: torch.Tensor


# Stack the loaded adapters while their ranks add up to at most this (four rank-8 adapters: a fifth
# more product columns than the base q/k/v of a 135M model); beyond, per-adapter segments cost less.
STACKED_MAX_RANKS = 32


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

    def attach(self, model: nn.Module) -> None:
        object.__setattr__(model, LORA_ATTRIBUTE, self)

    def fill(self, slot: int, adapter: LoraAdapter | None) -> None:
        self._adapters[slot] = adapter
        self._pairs[slot] = None
        self._stack = None

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
        return SegmentDeltas(tuple((seg, self._slot_pairs(seg.slot)) for seg in segments))

    def _build_stack(self, slots: list[int]) -> Stack:
        per_slot = {slot: self._slot_pairs(slot) for slot in slots}
        layouts: list[dict[int, tuple[int, int]]] = []
        widths: list[int] = []
        like: GroupPair | None = None
        for group in range(len(GROUPS)):
            layout: dict[int, tuple[int, int]] = {}
            start = 0
            for slot in slots:
                found = [pair for p in per_slot[slot] if (pair := p[group]) is not None]
                if found:
                    like = found[0]
                    layout[slot] = (start, found[0].a.shape[0])
                    start += found[0].a.shape[0]
            layouts.append(layout)
            widths.append(start)
        assert like is not None  # a slot in use holds an adapter targeting something
        pairs: list[list[GroupPair | None]] = []
        for index, names in enumerate(self._names):
            row: list[GroupPair | None] = []
            for group, targets in enumerate(GROUPS):
                parts = [(per_slot[slot][index][group], layouts[group][slot]) for slot in layouts[group]]
                if not parts:
                    row.append(None)
                    continue
                fan_in = self._shapes[names[targets[0]]].in_features
                fan_out = sum(self._shapes[names[t]].out_features for t in targets)
                a = like.a.new_zeros(widths[group], fan_in)
                b = like.a.new_zeros(fan_out, widths[group])
                for pair, (start, width) in parts:
                    if pair is not None:
                        a[start : start + width] = pair.a
                        b[:, start : start + width] = pair.b
                row.append(GroupPair(a, b))
            pairs.append(row)
        return Stack(tuple(slots), pairs, layouts, widths, like.a)

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
        pairs = [adapter.weights.get(module) for module in modules]
        present = [pair for pair in pairs if pair is not None]
        if not present:
            return None
        if len(modules) != len(group):
            raise RuntimeError(f"the projections {group} are only partly wrapped for LoRA")
        like = present[0][0]
        a_parts: list[torch.Tensor] = []
        b_parts: list[torch.Tensor] = []
        for module, pair in zip(modules, pairs, strict=True):
            if pair is None:  # not targeted: a zero block
                shape = self._shapes[module]
                a_parts.append(like.new_zeros(adapter.rank, shape.in_features))
                b_parts.append(like.new_zeros(shape.out_features, adapter.rank))
            else:
                a_parts.append(pair[0])
                b_parts.append(pair[1] * adapter.scale)
        return GroupPair(torch.cat(a_parts).contiguous(), _block_diagonal(b_parts))


def _block_diagonal(blocks: list[torch.Tensor]) -> torch.Tensor:
    out = blocks[0].new_zeros(sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks))
    row = col = 0
    for block in blocks:
        out[row : row + block.shape[0], col : col + block.shape[1]] = block
        row, col = row + block.shape[0], col + block.shape[1]
    return out


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
