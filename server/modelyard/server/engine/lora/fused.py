"""The adapters' deltas shaped for the fast decode path (``engine/fast_llama.py``).

The fast path computes q/k/v as one matmul and gate/up as another, so it adds the adapters' deltas per
*group* of projections that read one input: q/k/v, o, gate/up, down. Per device slot and layer, a
group's adapter is one ``(A, B)`` pair: the A of the group's projections concatenated along the rank
dim (``[Σr, in]``) and their B block-diagonal (``[Σout, Σr]``) with the adapter's scale folded in, so
one adapter's q, k and v deltas are two matmuls whose output lines up with the merged QKV columns. A
projection the adapter does not target is a zero block (adding an exact zero changes nothing).

The pairs are built from the adapter's own tensors the first time a forward needs a slot after it was
filled, and dropped when the slot is refilled; only the fast path pays for them. The wrapped
``LoraLinear`` projections (the eager path) keep reading the per-projection tensors.

``FusedLora.attach(model)`` hangs this object on the HF model (``LORA_ATTRIBUTE``); the fast path reads
it there at every forward (``lora_of``), so it serves adapter rows whichever was built first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

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
# The forward's adapters: each segment of rows with its slot's pairs.
Active = tuple[tuple[Segment, SlotPairs], ...]


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

    def attach(self, model: nn.Module) -> None:
        object.__setattr__(model, LORA_ATTRIBUTE, self)

    def fill(self, slot: int, adapter: LoraAdapter | None) -> None:
        self._adapters[slot] = adapter
        self._pairs[slot] = None

    def active(self) -> Active | None:
        """The forward's adapter segments with their pairs; None when every row is a base row."""
        segments = self._batch.segments
        if not segments:
            return None
        return tuple((seg, self._slot_pairs(seg.slot)) for seg in segments)

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


def add_deltas(
    active: Active, layer: int, group: int, x: torch.Tensor, out: torch.Tensor, query: int
) -> None:
    """``out[rows] += (x[rows] @ A.T) @ B.T`` for each adapter's rows (in place). ``x`` is
    ``[rows * query, in]`` and ``out`` ``[rows * query, out]``; a segment's rows index the first dim of
    their ``[rows, query, ...]`` views, so prefill chunks and decode steps take the same path."""
    for seg, pairs in active:
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


def by_layer(names: Iterable[str]) -> list[dict[str, str]]:
    """Wrapped module names per decoder layer (``...layers.<i>.<...>.<target>``): ``[{target: name}]``."""
    grouped: dict[int, dict[str, str]] = {}
    for name in names:
        match = LAYER_INDEX.search(name)
        if match is not None:
            grouped.setdefault(int(match[1]), {})[name.rsplit(".", 1)[-1]] = name
    return [grouped.get(i, {}) for i in range(max(grouped, default=-1) + 1)]
