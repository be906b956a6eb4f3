"""``LoraLinear``: a base ``nn.Linear`` plus the LoRA deltas of the adapters in the batch, per row.

The model runner's forward does not know about adapters: every wrapped projection reads the step's
``LoraBatch`` (set by ``LoraManager.prepare`` just before the forward) and, for each adapter present,
adds ``(x[rows] @ A.T @ B.T) * scale`` to those rows only. Base rows cost nothing extra. This is the
"per-adapter segments" kernel; the measured alternatives are in docs/lora.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True, slots=True)
class Segment:
    """The rows of one forward that run under one adapter slot."""

    slot: int
    rows: torch.Tensor  # row indices (dim 0 of the projection's input), long, on the model's device
    scale: float
    whole: bool  # every row of the batch: no gather/scatter needed


class LoraBatch:
    """The adapter segments of the forward about to run; empty means every row is a base row.

    Projections that read the same input (q/k/v, gate/up) share one gather of an adapter's rows: the
    last gathered input is kept per slot, keyed by the input tensor itself.
    """

    def __init__(self) -> None:
        self.segments: tuple[Segment, ...] = ()
        self._gathered: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def set(self, segments: tuple[Segment, ...]) -> None:
        self.segments = segments
        self._gathered = {}

    def rows_of(self, x: torch.Tensor, seg: Segment) -> torch.Tensor:
        hit = self._gathered.get(seg.slot)
        if hit is not None and hit[0] is x:
            return hit[1]
        rows = x.index_select(0, seg.rows)
        self._gathered[seg.slot] = (x, rows)
        return rows


class LoraLinear(nn.Module):
    """Wraps one projection; ``slots[i]`` holds the (A, B) of the adapter in device slot ``i``."""

    def __init__(self, base: nn.Linear, batch: LoraBatch, max_loras: int) -> None:
        super().__init__()
        self.base = base
        self.in_features = base.in_features
        self.out_features = base.out_features
        self._batch = batch
        self.slots: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * max_loras

    @property
    def weight(self) -> torch.Tensor:
        # Code that inspects the projection (memory planning, dtype probes) still finds its weight.
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        for seg in self._batch.segments:
            pair = self.slots[seg.slot]
            if pair is None:
                continue  # this adapter does not target this projection
            a, b = pair
            # (x A^T) B^T * scale, added to the base output: the order of PEFT's own sum.
            if seg.whole:
                out += F.linear(F.linear(x, a), b) * seg.scale
            else:
                delta = F.linear(F.linear(self._batch.rows_of(x, seg), a), b) * seg.scale
                out.index_add_(0, seg.rows, delta)
        return out
